// The share page (#/share/TOKEN): what a share link's holder sees, without an account.
// Everything comes from /api/share/TOKEN (api/share_links.py), scoped by the server to
// the link's one study: its images rendered as JPEG, its signed reports with their
// PDFs, and the study as a ZIP. The PIN, when the link has one, travels in the
// X-Share-PIN header and is kept only in this page's memory. Answers: 403 wants the
// (right) PIN, 410 an expired or revoked link, 401 an unknown one.
import { HttpError, reason } from "./api.js";
import { formatBytes, fileName, save } from "./download.js";
import * as dicom from "./dicom.js";
import { el, label } from "./dom.js";
import { t, translate, onLanguage } from "./i18n.js";
import { reportSummary } from "./report.js";

const AHEAD = 3; // images fetched ahead of the one on screen

export function showShare(container, token) {
  const page = new SharePage(container, token);
  page.open();
  return () => page.close();
}

class SharePage {
  constructor(container, token) {
    this.container = container;
    this.token = token;
    this.base = `/api/share/${encodeURIComponent(token)}`;
    this.pin = "";
    this.images = new Map(); // url -> Promise<object URL>
    this.onKey = (event) => this.key(event);
    this.stopLanguage = onLanguage(() => {
      if (!this.study) return; // a notice or the PIN form: relabelled by translate()
      this.render();
      this.showImage();
    });
  }

  async request(path, accept) {
    const headers = { Accept: accept };
    if (this.pin) headers["X-Share-PIN"] = this.pin;
    const response = await fetch(path, { headers });
    if (!response.ok) throw new HttpError(response.status, await reason(response));
    return response;
  }

  async open() {
    this.notice("share.page.loading");
    try {
      this.study = await (await this.request(this.base, "application/json")).json();
    } catch (error) {
      this.failed(error);
      return;
    }
    if (this.closed) return;
    this.slices = this.study.series.map((series) =>
      series.instances.flatMap((instance) =>
        Array.from({ length: instance.frames }, (_, i) =>
          instance.frames > 1 ? `${instance.rendered_url}?frame=${i + 1}` : instance.rendered_url,
        ),
      ),
    );
    this.seriesIndex = 0;
    this.index = 0;
    this.render();
    document.addEventListener("keydown", this.onKey);
    this.showImage();
  }

  close() {
    this.closed = true;
    this.stopLanguage();
    document.removeEventListener("keydown", this.onKey);
    for (const promise of this.images.values()) promise.then((url) => URL.revokeObjectURL(url)).catch(() => {});
  }

  failed(error) {
    this.study = null;
    if (error.status === 403) this.askPin(Boolean(this.pin));
    else if (error.status === 410) this.notice("share.page.gone", "gone");
    else if (error.status === 401 || error.status === 404) this.notice("share.page.unknown", "unknown");
    else this.notice("share.page.error", "error", { message: error.message });
  }

  notice(key, state = "loading", params = {}) {
    // Relabelled on a language switch, unless it carries the server's detail.
    const props = { className: "share-message", role: "alert" };
    const message = Object.keys(params).length ? el("p", { ...props, text: t(key, params) }) : label("p", key, props);
    this.container.replaceChildren(
      el(
        "div",
        { className: "share-notice", dataset: { state } },
        label("h1", "share.page.title"),
        message,
      ),
    );
    translate(this.container);
  }

  askPin(wrong) {
    const input = el("input", {
      name: "pin",
      type: "password",
      inputmode: "numeric",
      autocomplete: "off",
      maxlength: "12",
      required: true,
    });
    const form = el(
      "form",
      {
        className: "login share-pin",
        onSubmit: (event) => {
          event.preventDefault();
          this.pin = input.value.trim();
          this.open();
        },
      },
      label("h1", "share.page.title"),
      label("p", "share.page.pinNeeded"),
      el("label", {}, label("span", "share.pin"), input),
      el("button", { type: "submit", className: "tool primary", dataset: { i18n: "share.page.open" } }),
      wrong ? label("div", "share.page.wrongPin", { className: "login-message", role: "alert" }) : null,
    );
    this.container.replaceChildren(el("div", { className: "login-page" }, form));
    translate(this.container);
    input.focus();
  }

  render() {
    const study = this.study;
    this.image = el("img", { className: "share-image", alt: "" });
    this.counter = el("span", { className: "share-counter" });
    this.slider = el("input", {
      type: "range",
      className: "share-slider",
      min: "0",
      value: "0",
      "aria-label": "image",
      onInput: () => this.go(Number(this.slider.value)),
    });
    this.status = el("div", { className: "share-status", role: "status" });
    const series = study.series.map((s, i) =>
      el("button", {
        type: "button",
        className: `tool${i === this.seriesIndex ? " on" : ""}`,
        dataset: { series: s.series_instance_uid },
        text: t("share.page.series", { n: i + 1, count: this.slices[i].length }),
        onClick: () => this.chooseSeries(i),
      }),
    );
    const title = [
      dicom.personName(study.patient_name),
      study.patient_id,
      dicom.formatDate(study.study_date),
      study.study_description,
      study.modalities,
    ]
      .filter(Boolean)
      .join(" · ");
    const stage = el(
      "div",
      { className: "share-stage", onWheel: (event) => this.wheel(event) },
      this.image,
    );
    this.container.replaceChildren(
      el(
        "div",
        { className: "share" },
        el(
          "div",
          { className: "toolbar" },
          el("span", { className: "share-title", text: title }),
          el("span", { className: "spacer" }),
          el("button", {
            type: "button",
            className: "tool",
            dataset: { i18n: "download.study", action: "download-study" },
            onClick: () => this.download(),
          }),
        ),
        this.status,
        el(
          "div",
          { className: "share-body" },
          el(
            "section",
            { className: "share-images" },
            el("div", { className: "tool-group share-series" }, ...series),
            study.series.length ? stage : label("p", "share.page.noImages", { className: "rp-note" }),
            el("div", { className: "share-nav" }, this.slider, this.counter),
          ),
          el(
            "aside",
            { className: "report-panel share-reports" },
            label("div", "report.title", { className: "panel-title" }),
            el("div", { className: "rp-body" }, ...this.reports()),
          ),
        ),
      ),
    );
    translate(this.container);
    this.updateNav();
  }

  reports() {
    if (!this.study.reports.length) return [label("p", "report.noneSigned", { className: "rp-note" })];
    return [...this.study.reports].reverse().map((report) =>
      el(
        "div",
        { className: "rp-reader", dataset: { report: String(report.id), status: report.status } },
        // The share summary has no template: each field under its own key's label.
        ...reportSummary(report, Object.keys(report.fields).map((key) => ({ key, label: key }))),
        el(
          "div",
          { className: "rp-actions" },
          el("button", {
            type: "button",
            className: "tool",
            dataset: { i18n: "report.downloadPdf", action: "download-pdf" },
            onClick: () => this.download(report.pdf_url, `report-${report.id}-v${report.version}.pdf`, "application/pdf"),
          }),
        ),
      ),
    );
  }

  chooseSeries(i) {
    this.seriesIndex = i;
    this.index = 0;
    this.container.querySelectorAll(".share-series [data-series]").forEach((b, n) => b.classList.toggle("on", n === i));
    this.updateNav();
    this.showImage();
  }

  get current() {
    return this.slices[this.seriesIndex] || [];
  }

  go(index) {
    const clamped = Math.min(Math.max(index, 0), this.current.length - 1);
    if (clamped === this.index || clamped < 0) return;
    this.index = clamped;
    this.updateNav();
    this.showImage();
  }

  updateNav() {
    const count = this.current.length;
    this.slider.max = String(Math.max(count - 1, 0));
    this.slider.value = String(this.index);
    this.slider.hidden = count <= 1;
    this.counter.textContent = count ? t("ov.image", { n: this.index + 1, total: count }) : "";
  }

  // The image on screen; the next few are fetched meanwhile.
  async showImage() {
    const urls = this.current;
    if (!urls.length) return;
    const wanted = { series: this.seriesIndex, index: this.index };
    for (let i = this.index + 1; i <= this.index + AHEAD && i < urls.length; i++) this.fetchImage(urls[i]).catch(() => {});
    try {
      const src = await this.fetchImage(urls[this.index]);
      if (this.closed || wanted.series !== this.seriesIndex || wanted.index !== this.index) return;
      this.image.src = src;
      this.image.dataset.series = String(wanted.series);
      this.image.dataset.index = String(wanted.index);
      this.status.textContent = "";
    } catch (error) {
      if (error.status === 403 || error.status === 410 || error.status === 401) this.failed(error);
      else this.status.textContent = t("share.page.imageFailed", { message: error.message });
    }
  }

  fetchImage(url) {
    if (!this.images.has(url)) {
      const promise = this.request(url, "image/jpeg")
        .then((response) => response.blob())
        .then((blob) => URL.createObjectURL(blob));
      promise.catch(() => this.images.delete(url));
      this.images.set(url, promise);
    }
    return this.images.get(url);
  }

  wheel(event) {
    event.preventDefault();
    this.go(this.index + Math.sign(event.deltaY));
  }

  key(event) {
    if (event.target.closest?.("input:not(.share-slider), select, textarea")) return;
    const steps = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
    if (!(event.key in steps)) return;
    event.preventDefault();
    this.go(this.index + steps[event.key]);
  }

  async download(path = `${this.base}/download`, fallback = "study.zip", accept = "application/zip") {
    this.status.textContent = t("download.starting");
    try {
      const response = await this.request(path, accept);
      const name = fileName(response, fallback);
      const progress = (got) => (this.status.textContent = t("download.progress", { name, size: formatBytes(got) }));
      const bytes = await save(response, name, progress);
      this.status.textContent = t("download.done", { name, size: formatBytes(bytes) });
    } catch (error) {
      if (error.status === 403 || error.status === 410 || error.status === 401) this.failed(error);
      else this.status.textContent = t("download.failed", { message: error.message });
    }
  }
}
