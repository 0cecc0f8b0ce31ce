// Share links of a study (api/share_links.py), for radiologists and admins: make one
// (lifetime, optional PIN), see its address once, list the study's links, revoke one.
// The address opens the viewer's share page (#/share/TOKEN, share.js): the token sits
// after the '#', so it never reaches a server log or a Referer header.
import * as api from "./api.js";
import { formatInstant } from "./dicom.js";
import { el, label } from "./dom.js";
import { t, translate } from "./i18n.js";

const LIFETIMES = [
  [24 * 60, "share.exp.1d"],
  [3 * 24 * 60, "share.exp.3d"],
  [7 * 24 * 60, "share.exp.7d"],
  [30 * 24 * 60, "share.exp.30d"],
];

export function shareUrl(token) {
  return `${location.origin}/viewer/#/share/${encodeURIComponent(token)}`;
}

export class ShareLinks {
  constructor(studyUid) {
    this.studyUid = studyUid;
    this.lifetime = el(
      "select",
      { name: "expires" },
      ...LIFETIMES.map(([minutes, key]) => label("option", key, { value: String(minutes) })),
    );
    this.lifetime.value = String(3 * 24 * 60);
    this.pin = el("input", {
      name: "pin",
      inputmode: "numeric",
      pattern: "[0-9]{4,12}",
      maxlength: "12",
      autocomplete: "off",
      dataset: { i18nPlaceholder: "share.pinHint" },
    });
    this.created = el("div", { className: "sl-created" });
    this.message = el("div", { className: "rp-message", role: "status" });
    this.list = el("ul", { className: "sl-list" });
    this.root = el(
      "section",
      { className: "sl" },
      label("h4", "share.title"),
      el(
        "form",
        {
          className: "sl-form",
          onSubmit: (event) => {
            event.preventDefault();
            this.create();
          },
        },
        el("label", { className: "rp-field" }, label("span", "share.expires"), this.lifetime),
        el("label", { className: "rp-field" }, label("span", "share.pin"), this.pin),
        el("button", { type: "submit", className: "tool", dataset: { i18n: "share.create", action: "share" } }),
      ),
      this.created,
      this.message,
      this.list,
    );
    translate(this.root);
  }

  async load() {
    try {
      const links = await api.json(`/api/studies/${encodeURIComponent(this.studyUid)}/share-links`);
      this.list.replaceChildren(...links.reverse().map((link) => this.row(link)));
      translate(this.list);
    } catch (error) {
      this.say("share.failed", { message: error.message });
    }
  }

  async create() {
    const pin = this.pin.value.trim();
    if (pin && !/^[0-9]{4,12}$/.test(pin)) return this.say("share.badPin");
    try {
      const link = await api.send("POST", `/api/studies/${encodeURIComponent(this.studyUid)}/share-links`, {
        expires_in_minutes: Number(this.lifetime.value),
        pin,
      });
      const url = el("input", { className: "sl-url", readonly: true, value: shareUrl(link.token), "aria-label": "link" });
      const copy = el("button", {
        type: "button",
        className: "tool",
        dataset: { i18n: "share.copy" },
        onClick: () => copyText(url),
      });
      this.created.replaceChildren(
        el("div", { className: "sl-url-row" }, url, copy),
        label("p", pin ? "share.onceWithPin" : "share.once", { className: "rp-note" }),
      );
      translate(this.created);
      this.pin.value = "";
      this.say("");
      url.select();
      await this.load();
    } catch (error) {
      this.say("share.failed", { message: error.message });
    }
  }

  row(link) {
    const state = link.active ? "active" : link.revoked_at ? "revoked" : "expired";
    const facts = [
      t("share.by", { name: link.created_by, at: formatInstant(link.created_at) }),
      t("share.until", { at: formatInstant(link.expires_at) }),
      link.has_pin ? t("share.withPin") : null,
      t("share.uses", { count: link.uses }),
    ].filter(Boolean);
    return el(
      "li",
      { dataset: { link: String(link.id), state } },
      el("span", { className: `sl-state state-${state}`, text: t(`share.state.${state}`) }),
      el("span", { className: "sl-facts", text: facts.join(" · ") }),
      link.active
        ? el("button", {
            type: "button",
            className: "tool small",
            dataset: { i18n: "share.revoke", action: "revoke" },
            onClick: () => this.revoke(link),
          })
        : null,
    );
  }

  async revoke(link) {
    try {
      await api.send("DELETE", `/api/share-links/${link.id}`);
      await this.load();
    } catch (error) {
      this.say("share.failed", { message: error.message });
    }
  }

  say(key, params = {}) {
    this.message.textContent = key ? t(key, params) : "";
  }
}

// The clipboard API needs a secure context; plain http on a hospital LAN falls back
// to selecting the text for Ctrl+C.
async function copyText(input) {
  input.select();
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    document.execCommand?.("copy");
  }
}
