// The report panel beside the images (issue 7): the study's reports, every version
// newest first with its status, signer and time; the editor in which a radiologist
// or an admin writes a draft (a structured template chosen from the modality and
// body part, findings, impression, free text, key images), saves it, signs it after
// a confirmation, and amends a signed report as a new version; the PDF of each.
// A referring doctor gets only signed reports from the server (api/reports.py) and
// reads them. Report states and their rules: storage/reports.py.
import * as api from "./api.js";
import { formatInstant } from "./dicom.js";
import * as download from "./download.js";
import { el, label } from "./dom.js";
import { t, translate } from "./i18n.js";
import { ShareLinks } from "./share_links.js";

export const WRITERS = new Set(["admin", "radiologist"]);
const TEXTS = ["findings", "impression", "free_text"];
const MAX_KEY_IMAGES = 12; // storage.reports.MAX_KEY_IMAGES

// The template a study most likely wants: modality, then the body part examined
// (PS3.3 C.7.3.1) or the description, in English or Vietnamese.
const HEAD = /HEAD|BRAIN|SKULL|NÃO|SỌ|ĐẦU/u;
const TEMPLATE_RULES = [
  ["xa-coronary", "XA", /./u],
  ["ct-head", "CT", HEAD],
  ["ct-chest", "CT", /CHEST|THORAX|LUNG|NGỰC|PHỔI/u],
  ["mr-brain", "MR", HEAD],
];

export function guessTemplate(modalities, words) {
  const text = words.join(" ").normalize("NFC").toUpperCase();
  const found = TEMPLATE_RULES.find(([, modality, body]) => modalities.includes(modality) && body.test(text));
  return found ? found[0] : "none";
}

// A translation, or `fallback` (the server's English label) when there is none.
function translated(key, fallback) {
  const text = t(key);
  return text === key ? fallback : text;
}

export class ReportPanel {
  // currentImage(): the SOP Instance UID on screen, or null; describe(uid): "Se 2 · Im 13".
  constructor({ studyUid, currentImage, describe }) {
    this.studyUid = studyUid;
    this.currentImage = currentImage;
    this.describe = describe;
    this.reports = [];
    this.templates = { none: [] };
    this.selected = null; // a report id; null with a form: a new report not yet saved
    this.form = null;
    this.confirming = false;
    this.objectUrls = [];
    this.study = { modalities: [], words: [] };
    this.list = el("div", { className: "rp-list" });
    this.current = el("div", { className: "rp-current" });
    this.message = el("div", { className: "rp-message", role: "status" });
    this.shareBox = el("div");
    this.root = el(
      "aside",
      { className: "report-panel" },
      label("div", "report.title", { className: "panel-title" }),
      el("div", { className: "rp-body" }, this.list, this.message, this.current, this.shareBox),
    );
  }

  // What the template is guessed from: the study's modalities, body parts, description.
  setStudy(study) {
    this.study = study;
  }

  async load() {
    try {
      const [me, templates] = await Promise.all([api.whoAmI(), api.json("/api/report-templates")]);
      this.role = me.role;
      this.username = me.username;
      this.templates = templates;
      if (this.writer) {
        this.share = new ShareLinks(this.studyUid);
        this.shareBox.replaceChildren(this.share.root);
        this.share.load();
      }
      await this.reload();
      this.root.dataset.role = me.role; // loaded
    } catch (error) {
      this.say("report.error", { message: error.message }, true);
    }
  }

  close() {
    this.closed = true;
    this.objectUrls.forEach((url) => URL.revokeObjectURL(url));
  }

  get writer() {
    return WRITERS.has(this.role);
  }

  // The list from the server; keep the selection, else pick the newest version.
  async reload(select = this.selected) {
    this.reports = await api.json(`/api/studies/${encodeURIComponent(this.studyUid)}/reports`);
    if (this.closed) return;
    const newest = this.reports[this.reports.length - 1];
    const chosen = this.reports.find((r) => r.id === select) || newest;
    this.choose(chosen || null);
  }

  choose(report) {
    this.selected = report ? report.id : null;
    this.confirming = false;
    if (report?.status === "draft") this.form = formOf(report);
    else if (!report && this.writer) this.form = blankForm(guessTemplate(this.study.modalities, this.study.words));
    else this.form = null;
    this.render();
  }

  get report() {
    return this.reports.find((r) => r.id === this.selected) || null;
  }

  // After a language switch: what was built with t() is built again.
  relabel() {
    this.render();
    this.share?.load();
  }

  render() {
    if (!this.role) return; // not loaded yet
    this.list.replaceChildren(...[...this.reports].reverse().map((r) => this.row(r)));
    const report = this.report;
    if (this.form && this.writer) this.current.replaceChildren(this.editor(report));
    else if (report) this.current.replaceChildren(this.reader(report));
    else {
      const none = this.writer ? "report.none" : "report.noneSigned";
      this.current.replaceChildren(label("p", none, { className: "rp-note" }));
    }
    translate(this.root);
  }

  row(report) {
    const who = report.finalized_by
      ? `${report.finalized_by} · ${formatInstant(report.finalized_at)}`
      : `${report.author} · ${formatInstant(report.updated_at)}`;
    return el(
      "button",
      {
        type: "button",
        className: `rp-row${report.id === this.selected ? " on" : ""}`,
        dataset: { report: String(report.id), status: report.status },
        onClick: () => this.choose(report),
      },
      el("span", { className: "rp-version", text: `v${report.version}` }),
      el("span", { className: `rp-status status-${report.status}`, text: t(`report.status.${report.status}`) }),
      el("span", { className: "rp-who", text: who }),
    );
  }

  // A signed report (or, for a writer, any version not being edited), read-only.
  reader(report) {
    const amendment = this.reports.find((r) => r.previous_id === report.id);
    const amending = amendment?.status === "draft" ? t("report.amending", { version: amendment.version }) : "";
    return el(
      "div",
      { className: "rp-reader", dataset: { report: String(report.id), status: report.status } },
      ...reportSummary(report, this.templates[report.template] || []),
      report.key_images.length ? this.keyImages(report) : null,
      el(
        "div",
        { className: "rp-actions" },
        button("report.openPdf", () => this.pdf(report, "open"), { action: "open-pdf" }),
        button("report.downloadPdf", () => this.pdf(report, "save"), { action: "download-pdf" }),
        this.writer && report.status === "final" && !amendment
          ? button("report.amend", () => this.amend(report), { action: "amend" })
          : null,
      ),
      amending ? el("p", { className: "rp-note", text: amending }) : null,
    );
  }

  keyImages(report) {
    const images = report.key_images.map((uid, i) => {
      const img = el("img", { className: "rp-key", alt: this.describe(uid), title: this.describe(uid) });
      api
        .blob(`/api/reports/${report.id}/key-images/${i + 1}`)
        .then((blob) => {
          const url = URL.createObjectURL(blob);
          this.objectUrls.push(url);
          img.src = url;
        })
        .catch(() => img.classList.add("missing"));
      return img;
    });
    const keys = el("div", { className: "rp-keys" }, ...images);
    return el("section", { className: "rp-text" }, label("h4", "report.keyImages"), keys);
  }

  // The draft being written (report null: a new one, created on the first save).
  editor(report) {
    const form = this.form;
    const templateSelect = el(
      "select",
      {
        name: "template",
        onChange: () => {
          form.template = templateSelect.value;
          this.render();
        },
      },
      ...Object.keys(this.templates).map((name) => el("option", { value: name, text: templateName(name) })),
    );
    templateSelect.value = form.template;
    const fields = (this.templates[form.template] || []).map((f) =>
      el(
        "label",
        { className: "rp-field" },
        el("span", { text: translated(`tpl.field.${f.key}`, f.label) }),
        el("input", {
          name: `field-${f.key}`,
          value: form.fields[f.key] || "",
          maxlength: "2000",
          onInput: (event) => (form.fields[f.key] = event.target.value),
        }),
      ),
    );
    const texts = TEXTS.map((name) =>
      el(
        "label",
        { className: "rp-field" },
        label("span", `report.${name}`),
        el("textarea", {
          name,
          rows: name === "findings" ? 7 : 3,
          maxlength: "20000",
          text: form[name], // a textarea's initial value is its text
          onInput: (event) => (form[name] = event.target.value),
        }),
      ),
    );
    const keys = el(
      "ul",
      { className: "rp-keylist" },
      ...form.key_images.map((uid) =>
        el(
          "li",
          { dataset: { instance: uid } },
          el("span", { text: this.describe(uid) }),
          el("button", {
            type: "button",
            className: "tool small",
            text: "×",
            title: t("report.removeKey"),
            onClick: () => {
              form.key_images = form.key_images.filter((u) => u !== uid);
              this.render();
            },
          }),
        ),
      ),
    );
    return el(
      "form",
      {
        className: "rp-editor",
        dataset: { report: report ? String(report.id) : "new" },
        onSubmit: (event) => {
          event.preventDefault();
          this.save();
        },
      },
      el(
        "div",
        { className: "rp-head" },
        el("span", { className: "rp-status status-draft", text: t("report.status.draft") }),
        el("span", { text: report ? t("report.version", { version: report.version }) : t("report.new") }),
      ),
      el("label", { className: "rp-field" }, label("span", "report.template"), templateSelect),
      ...fields,
      ...texts,
      el(
        "div",
        { className: "rp-field" },
        label("span", "report.keyImages"),
        keys,
        button("report.addKey", () => this.addKeyImage(), { action: "add-key" }),
      ),
      el(
        "div",
        { className: "rp-actions" },
        el("button", { type: "submit", className: "tool primary", dataset: { i18n: "report.save", action: "save" } }),
        button("report.finalize", () => this.confirm(true), { action: "finalize" }),
        report ? button("report.draftPdf", () => this.pdf(report, "open"), { action: "open-pdf" }) : null,
      ),
      this.confirming ? this.confirmation() : null,
    );
  }

  confirmation() {
    const signer = el("input", { name: "signer", value: this.username || "", maxlength: "128", required: true });
    return el(
      "div",
      { className: "rp-confirm", role: "alertdialog" },
      label("p", "report.confirm"),
      el("label", { className: "rp-field" }, label("span", "report.signer"), signer),
      el(
        "div",
        { className: "rp-actions" },
        button("report.sign", () => this.finalize(signer.value), { action: "sign" }, "tool primary"),
        button("report.cancel", () => this.confirm(false), { action: "cancel" }),
      ),
    );
  }

  confirm(on) {
    this.confirming = on;
    this.render();
    this.current.querySelector("[name=signer]")?.focus();
  }

  addKeyImage() {
    const uid = this.currentImage();
    if (!uid) return this.say("report.noImage", {}, true);
    if (this.form.key_images.includes(uid)) return this.say("report.keyTwice", {}, true);
    if (this.form.key_images.length >= MAX_KEY_IMAGES) return this.say("report.keyMax", { max: MAX_KEY_IMAGES }, true);
    this.form.key_images.push(uid);
    this.render();
  }

  body() {
    const form = this.form;
    const keys = new Set((this.templates[form.template] || []).map((f) => f.key));
    const fields = Object.fromEntries(Object.entries(form.fields).filter(([key, value]) => keys.has(key) && value.trim()));
    const { template, findings, impression, free_text, key_images } = form;
    return { template, fields, findings, impression, free_text, key_images };
  }

  // Save the draft (create it the first time); true when it worked.
  async save(quiet = false) {
    try {
      const study = encodeURIComponent(this.studyUid);
      const saved =
        this.selected === null
          ? await api.send("POST", `/api/studies/${study}/reports`, this.body())
          : await api.send("PATCH", `/api/reports/${this.selected}`, this.body());
      this.selected = saved.id;
      await this.reload(saved.id);
      if (!quiet) this.say("report.saved");
      return true;
    } catch (error) {
      this.say("report.saveFailed", { message: error.message }, true);
      return false;
    }
  }

  async finalize(signer) {
    if (!(await this.save(true))) return;
    try {
      const body = signer.trim() ? { signer: signer.trim() } : {};
      const signed = await api.send("POST", `/api/reports/${this.selected}/finalize`, body);
      await this.reload(signed.id);
      this.say("report.signed");
    } catch (error) {
      this.say("report.signFailed", { message: error.message }, true);
    }
  }

  async amend(report) {
    try {
      const draft = await api.send("POST", `/api/reports/${report.id}/amend`);
      await this.reload(draft.id);
      this.say("report.amended", { version: draft.version });
    } catch (error) {
      this.say("report.saveFailed", { message: error.message }, true);
    }
  }

  async pdf(report, how) {
    try {
      const response = await api.request(report.pdf_url, { accept: "application/pdf" });
      if (how === "open") await download.open(response);
      else await download.save(response, `report-${report.id}-v${report.version}.pdf`);
    } catch (error) {
      this.say("report.pdfFailed", { message: error.message }, true);
    }
  }

  say(key, params = {}, error = false) {
    this.message.textContent = t(key, params);
    this.message.classList.toggle("error", error);
  }
}

// A report read-only: status, version, signer, template, structured fields (`fields`,
// the template's {key, label} in order) and texts. Also the share page's.
export function reportSummary(report, fields) {
  const filled = fields.filter((f) => report.fields[f.key]);
  const signed = report.finalized_by
    ? t("report.signedBy", { name: report.finalized_by, at: formatInstant(report.finalized_at) })
    : "";
  return [
    el(
      "div",
      { className: "rp-head" },
      el("span", { className: `rp-status status-${report.status}`, text: t(`report.status.${report.status}`) }),
      el("span", { text: t("report.version", { version: report.version }) }),
    ),
    signed ? el("div", { className: "rp-signed", text: signed }) : null,
    report.template && report.template !== "none"
      ? el("div", { className: "rp-template", text: templateName(report.template) })
      : null,
    filled.length
      ? el(
          "dl",
          { className: "rp-fields" },
          ...filled.flatMap((f) => [
            el("dt", { text: translated(`tpl.field.${f.key}`, f.label) }),
            el("dd", { text: report.fields[f.key] }),
          ]),
        )
      : null,
    ...TEXTS.filter((name) => report[name]).map((name) =>
      el("section", { className: `rp-text rp-${name}` }, label("h4", `report.${name}`), el("p", { text: report[name] })),
    ),
  ];
}

function formOf(report) {
  return {
    template: report.template,
    fields: { ...report.fields },
    findings: report.findings,
    impression: report.impression,
    free_text: report.free_text,
    key_images: [...report.key_images],
  };
}

function blankForm(template) {
  return { template, fields: {}, findings: "", impression: "", free_text: "", key_images: [] };
}

function templateName(name) {
  return translated(`tpl.${name}`, name);
}

function button(key, onClick, dataset = {}, className = "tool") {
  return el("button", { type: "button", className, dataset: { ...dataset, i18n: key }, onClick });
}
