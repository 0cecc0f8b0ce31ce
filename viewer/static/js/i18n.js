// Interface language: one strings file per language (../i18n/*.js), a switch that
// re-labels every element carrying data-i18n* attributes, and t() for text built
// in code. The choice is remembered in localStorage (it is not patient data).
import en from "../i18n/en.js";
import vi from "../i18n/vi.js";

export const LANGUAGES = { en, vi };
const STORAGE_KEY = "pacs.lang";
const listeners = new Set();
let current = LANGUAGES[localStorage.getItem(STORAGE_KEY)] ? localStorage.getItem(STORAGE_KEY) : "en";

export function language() {
  return current;
}

export function t(key, params = {}) {
  const text = LANGUAGES[current][key] ?? LANGUAGES.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in params ? String(params[name]) : `{${name}}`));
}

export function setLanguage(lang) {
  if (!LANGUAGES[lang] || lang === current) return;
  current = lang;
  localStorage.setItem(STORAGE_KEY, lang);
  document.documentElement.lang = lang;
  translate(document);
  for (const listener of listeners) listener(lang);
}

export function onLanguage(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

// Labels from data-i18n (text), data-i18n-title and data-i18n-placeholder.
export function translate(root) {
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll("[data-i18n-title]")) node.title = t(node.dataset.i18nTitle);
  for (const node of root.querySelectorAll("[data-i18n-placeholder]")) {
    node.placeholder = t(node.dataset.i18nPlaceholder);
  }
}

document.documentElement.lang = current;
