// Building DOM without HTML strings: every piece of text, and above all every DICOM
// string (a patient may be called "<img src=x onerror=alert(1)>"), goes in as a
// text node. Nothing in the viewer assigns innerHTML.

// el("div", {className: "x", dataset: {a: 1}, title: "..."}, "text", childNode, ...)
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "className") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2).toLowerCase(), value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// A label translated now and again on every language switch (see i18n.translate).
export function label(tag, key, props = {}) {
  return el(tag, { ...props, dataset: { ...(props.dataset || {}), i18n: key } });
}
