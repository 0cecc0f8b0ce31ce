// The study view: series strip, toolbar, one or two viewports side by side.
//
// Opening a study costs three small JSON requests in parallel (the study and its
// series from QIDO-RS, PS3.18 §10.6, then the first series' instances) before the
// first slice is asked for; the first instance's metadata (window, frame rate) and
// the thumbnails come after it, so on a thin link the first image is not queued
// behind them; so do the report panel's requests (report.js).
import * as api from "./api.js";
import * as dicom from "./dicom.js";
import { el, label } from "./dom.js";
import { fileName, formatBytes, save } from "./download.js";
import { t, translate, onLanguage } from "./i18n.js";
import { ReportPanel } from "./report.js";
import { Viewport } from "./viewport.js";

// Keys 1..7 pick presets in this order (the five of the issue first).
const PRESET_ORDER = ["lung", "mediastinum", "bone", "brain", "abdomen", "stroke", "liver"];
const FPS_CHOICES = [5, 7.5, 10, 12.5, 15, 20, 25, 30];
const THUMB = 96;
const JPEG_QUALITY = 95; // the current image saved as JPEG
// Series with nothing to draw (PS3.3 C.7.3.1.1.1): a signed report's Encapsulated PDF
// (DOC), structured reports, key object selections, presentation states.
const NOT_IMAGES = new Set(["DOC", "SR", "KO", "PR"]);
let reportShown = true; // the report panel's toggle, kept from study to study

let presetsPromise = null;
function presets() {
  presetsPromise ??= fetch("presets.json").then((r) => r.json());
  return presetsPromise;
}

export function showStudy(container, studyUid) {
  const view = new StudyView(container, studyUid);
  view.open();
  return () => view.close();
}

class StudyView {
  constructor(container, studyUid) {
    this.container = container;
    this.studyUid = studyUid;
    this.objectUrls = [];
    this.series = [];
    this.viewports = [0, 1].map(
      (n) =>
        new Viewport({
          number: n + 1,
          onActivate: (vp) => this.activate(vp),
          onWindow: (vp) => vp === this.active && this.showPreset(),
          onMove: (vp) => this.follow(vp),
        }),
    );
    this.active = this.viewports[0];
    this.onKey = (event) => this.key(event);
    this.reportPanel = new ReportPanel({
      studyUid,
      currentImage: () => this.active.series?.slices[this.active.index]?.instance ?? null,
      describe: (uid) => this.describe(uid),
    });
  }

  async open() {
    this.build();
    document.addEventListener("keydown", this.onKey);
    this.stopLanguage = onLanguage(() => {
      this.viewports.forEach((vp) => vp.overlay());
      this.refreshStrip();
      this.presetTitles();
      this.reportPanel.relabel();
    });
    this.status.textContent = t("study.loading");
    try {
      const uid = encodeURIComponent(this.studyUid);
      const [studies, series] = await Promise.all([
        api.json(`/dicomweb/studies${api.query({ StudyInstanceUID: this.studyUid, includefield: "PatientAge" })}`),
        api.json(`/dicomweb/studies/${uid}/series?includefield=InstitutionName&includefield=BodyPartExamined`),
      ]);
      if (this.closed) return;
      if (!studies.length) throw new Error("not found");
      this.study = studyInfo(studies[0], series[0]);
      this.series = series.map((ds) => seriesInfo(ds, this.studyUid, this.study));
      this.status.textContent = "";
      this.title.textContent = `${this.study.patientName} · ${this.study.studyDate} · ${this.study.description}`;
      this.strip.replaceChildren(...this.series.map((s) => this.card(s)));
      this.reportPanel.setStudy({
        modalities: this.series.map((s) => s.modality),
        words: [this.study.description, ...series.map((ds) => dicom.text(ds, "BodyPartExamined"))],
      });
      const first = this.series.find((s) => !NOT_IMAGES.has(s.modality));
      if (first) await this.show(this.viewports[0], first);
      this.reportPanel.load();
      this.thumbnails();
    } catch (error) {
      this.status.textContent = t("study.error", { message: error.message });
    }
  }

  close() {
    this.closed = true;
    document.removeEventListener("keydown", this.onKey);
    this.stopLanguage?.();
    this.viewports.forEach((vp) => vp.destroy());
    this.objectUrls.forEach((url) => URL.revokeObjectURL(url));
    this.reportPanel.close();
    clearTimeout(this.statusTimer);
  }

  build() {
    this.status = el("div", { className: "study-status" });
    this.title = el("div", { className: "study-title" });
    this.strip = el("div", { className: "series-strip" });
    this.grid = el("div", { className: "viewports layout-1" }, ...this.viewports.map((vp) => vp.root));
    this.activate(this.viewports[0]);
    this.presetButtons = el("div", { className: "tool-group presets" });
    presets().then((table) => {
      this.presetTable = table;
      const buttons = PRESET_ORDER.filter((name) => table[name]).map((name, i) =>
        el("button", {
          type: "button",
          className: "tool",
          dataset: { preset: name, key: String(i + 1), i18n: `preset.${name}` },
          onClick: () => this.preset(name),
        }),
      );
      this.presetButtons.replaceChildren(
        ...buttons,
        toolButton("tool.default", "tool.defaultTitle", () => this.active.setWindow(null), { preset: "default" }),
      );
      translate(this.presetButtons);
      this.presetTitles();
      this.showPreset();
    });
    this.fpsSelect = el(
      "select",
      { className: "fps", "aria-label": "fps", onChange: () => this.active.playing && this.play() },
      ...FPS_CHOICES.map((fps) => el("option", { value: String(fps), text: String(fps) })),
    );
    this.fpsSelect.value = "15";
    this.playButton = toolButton("tool.play", "tool.playTitle", () => this.togglePlay(), { action: "play" });
    this.linkButton = toolButton("tool.link", "tool.linkTitle", () => this.toggleLink(), { action: "link" });
    this.reportButton = toolButton("tool.report", "tool.reportTitle", () => this.toggleReport(), { action: "report" });
    this.toolButtons = ["wl", "pan", "zoom"].map((tool) =>
      toolButton(`tool.${tool}`, `tool.${tool}Title`, () => this.setTool(tool), { tool }),
    );
    const toolbar = el(
      "div",
      { className: "toolbar" },
      el(
        "div",
        { className: "tool-group" },
        el("a", { className: "tool back", href: "#/worklist", dataset: { i18n: "study.back" } }),
      ),
      el(
        "div",
        { className: "tool-group" },
        layoutButton(1, () => this.layout(1)),
        layoutButton(2, () => this.layout(2)),
        this.linkButton,
      ),
      el("div", { className: "tool-group" }, ...this.toolButtons),
      this.presetButtons,
      el(
        "div",
        { className: "tool-group" },
        toolButton("tool.invert", "tool.invertTitle", () => this.active.toggleInvert(), { action: "invert" }),
        toolButton("tool.fit", "tool.fitTitle", () => this.active.fit(), { action: "fit" }),
        toolButton("tool.reset", "tool.resetTitle", () => this.active.reset(), { action: "reset" }),
      ),
      el(
        "div",
        { className: "tool-group cine" },
        this.playButton,
        this.fpsSelect,
        label("span", "tool.fps", { className: "unit" }),
      ),
      el(
        "div",
        { className: "tool-group downloads" },
        toolButton("download.study", "download.studyTitle", () => this.download("study"), { action: "download-study" }),
        toolButton("download.series", "download.seriesTitle", () => this.download("series"), { action: "download-series" }),
        toolButton("download.jpeg", "download.jpegTitle", () => this.download("jpeg"), { action: "download-jpeg" }),
      ),
      el("div", { className: "tool-group" }, this.reportButton),
      this.title,
    );
    this.container.replaceChildren(
      el(
        "div",
        { className: "study" },
        el("aside", { className: "series-panel" }, label("div", "study.series", { className: "panel-title" }), this.strip),
        el("section", { className: "study-main" }, toolbar, this.status, this.grid, label("div", "help.keys", { className: "help" })),
        this.reportPanel.root,
      ),
    );
    this.showReport(reportShown);
    this.setTool("wl");
    this.layout(1);
    translate(this.container);
  }

  card(series) {
    const img = el("img", { className: "thumb", alt: "", width: THUMB, height: THUMB });
    const count = el("span", { className: "count" });
    const node = el(
      "button",
      {
        type: "button",
        className: "series-card",
        dataset: { series: series.uid },
        title: series.description,
        // A signed report's PDF (DOC) and the like have nothing to draw: open the report panel.
        onClick: () => (NOT_IMAGES.has(series.modality) ? this.openReport() : this.show(this.active, series)),
      },
      img,
      el(
        "span",
        { className: "series-text" },
        el("span", { className: "series-name", text: `${series.modality} ${series.number ?? ""}`.trim() }),
        el("span", { className: "series-desc", text: series.description }),
        count,
      ),
    );
    series.card = { node, img, count };
    this.refreshCount(series);
    return node;
  }

  refreshCount(series) {
    const frames = series.slices?.length > 0 && series.slices[0].frames > 1;
    series.card.count.textContent = frames
      ? t("study.frames", { count: series.slices.length })
      : t("study.images", { count: series.instances });
  }

  refreshStrip() {
    this.series.forEach((s) => s.card && this.refreshCount(s));
    this.playButton.textContent = t(this.active.playing ? "tool.pause" : "tool.play");
  }

  async thumbnails() {
    for (const series of this.series) {
      if (this.closed) return;
      if (NOT_IMAGES.has(series.modality)) {
        series.card.node.classList.add("no-thumb");
        continue;
      }
      const url = `/dicomweb/studies/${encodeURIComponent(this.studyUid)}/series/${encodeURIComponent(series.uid)}/thumbnail?viewport=${THUMB},${THUMB}`;
      try {
        const objectUrl = URL.createObjectURL(await api.blob(url));
        this.objectUrls.push(objectUrl);
        series.card.img.src = objectUrl;
      } catch {
        series.card.node.classList.add("no-thumb");
      }
    }
    // Then the other series' slice lists, so choosing one is instant.
    for (const series of this.series) await this.slices(series).catch(() => {});
  }

  async slices(series) {
    series.slicesPromise ??= api
      .json(
        `/dicomweb/studies/${encodeURIComponent(this.studyUid)}/series/${encodeURIComponent(series.uid)}/instances?includefield=SliceLocation`,
      )
      .then((instances) => {
        series.slices = sliceList(instances);
        const first = instances[0];
        const rows = dicom.number(first, "Rows");
        const columns = dicom.number(first, "Columns");
        if (rows && columns) series.meta.size = { rows, columns };
        series.firstInstance = dicom.text(first, "SOPInstanceUID");
        this.refreshCount(series);
        return series;
      });
    return series.slicesPromise;
  }

  // The window and frame rate stored in the first instance (PS3.3 C.11.2, C.7.6.5).
  async metadata(series) {
    series.metaPromise ??= api
      .json(
        `/dicomweb/studies/${encodeURIComponent(this.studyUid)}/series/${encodeURIComponent(series.uid)}/instances/${encodeURIComponent(series.firstInstance)}/metadata`,
      )
      .then(([ds]) => {
        const center = dicom.number(ds, "WindowCenter");
        const width = dicom.number(ds, "WindowWidth");
        if (center !== null && width) Object.assign(series.meta, { windowCenter: center, windowWidth: width });
        series.meta.fullRange = storedRange(ds);
        series.meta.photometric = dicom.text(ds, "PhotometricInterpretation");
        const frameTime = dicom.number(ds, "FrameTime");
        series.meta.fps =
          dicom.number(ds, "RecommendedDisplayFrameRate") ||
          dicom.number(ds, "CineRate") ||
          (frameTime ? Math.round(1000 / frameTime) : null);
        return series;
      })
      .catch(() => series);
    return series.metaPromise;
  }

  async show(viewport, series) {
    await this.slices(series);
    if (this.closed) return;
    viewport.load(series);
    this.activate(viewport);
    this.markShown();
    const meta = await this.metadata(series);
    if (viewport.series === series) {
      if (meta.meta.fps) this.fpsSelect.value = closestFps(meta.meta.fps);
      viewport.overlay();
    }
  }

  markShown() {
    const shown = new Set(this.viewports.filter((vp) => vp.series && this.isVisible(vp)).map((vp) => vp.series.uid));
    for (const s of this.series) s.card?.node.classList.toggle("shown", shown.has(s.uid));
  }

  isVisible(viewport) {
    return viewport === this.viewports[0] || this.grid.classList.contains("layout-2");
  }

  // "Lung window (key 1)": titles with a parameter, so not data-i18n-title.
  presetTitles() {
    for (const button of this.presetButtons.querySelectorAll("[data-key]")) {
      const name = t(`preset.${button.dataset.preset}`);
      button.title = t("preset.title", { name, key: button.dataset.key });
    }
  }

  // The active viewport's preset lit in the toolbar ("default": the file's window).
  showPreset() {
    const vp = this.active;
    const lit = vp.windowName || (vp.window ? "" : "default");
    this.presetButtons?.querySelectorAll("[data-preset]").forEach((b) => b.classList.toggle("on", b.dataset.preset === lit));
  }

  activate(viewport) {
    this.active = viewport;
    this.showPreset();
    this.viewports.forEach((vp) => vp.root.classList.toggle("active", vp === viewport));
    if (this.playButton) this.playButton.textContent = t(viewport.playing ? "tool.pause" : "tool.play");
  }

  layout(n) {
    this.grid.classList.toggle("layout-1", n === 1);
    this.grid.classList.toggle("layout-2", n === 2);
    this.container.querySelectorAll("[data-layout]").forEach((b) => b.classList.toggle("on", b.dataset.layout === String(n)));
    if (n === 2) {
      const second = this.viewports[1];
      if (!second.series && this.series.length) {
        const other = this.series.find((s) => s !== this.viewports[0].series) || this.series[0];
        this.show(second, other);
      }
      this.activate(second);
    } else {
      this.viewports[1].stop();
      this.activate(this.viewports[0]);
    }
    this.markShown();
  }

  setTool(tool) {
    this.viewports.forEach((vp) => (vp.tool = tool));
    this.toolButtons.forEach((b) => b.classList.toggle("on", b.dataset.tool === tool));
  }

  preset(name) {
    const window = this.presetTable?.[name];
    if (window) this.active.setWindow(window, name);
  }

  // Linked scrolling: the other viewport goes to the slice nearest the active one's
  // Slice Location (PS3.3 C.7.6.2.1), or to the same fraction of its stack.
  follow(viewport) {
    if (!this.linked || viewport !== this.active || !this.grid.classList.contains("layout-2")) return;
    const other = this.viewports.find((vp) => vp !== viewport);
    if (!other.series || !viewport.series) return;
    const slice = viewport.series.slices[viewport.index];
    const fraction = viewport.index / Math.max(viewport.count - 1, 1);
    other.setIndex(other.nearest(slice.location ?? null, fraction));
  }

  toggleLink() {
    this.linked = !this.linked;
    this.linkButton.classList.toggle("on", this.linked);
    if (this.linked) this.follow(this.active);
  }

  toggleReport() {
    reportShown = !reportShown;
    this.showReport(reportShown);
  }

  openReport() {
    reportShown = true;
    this.showReport(true);
  }

  showReport(on) {
    this.container.querySelector(".study")?.classList.toggle("no-report", !on);
    this.reportButton.classList.toggle("on", on);
  }

  // A key image's place for people: "Se 2 · Im 13" (the UID's end if not loaded).
  describe(uid) {
    for (const series of this.series) {
      const index = series.slices?.findIndex((slice) => slice.instance === uid) ?? -1;
      if (index >= 0) return t("report.keyLabel", { series: series.number ?? "?", image: index + 1 });
    }
    return `…${uid.slice(-12)}`;
  }

  // Save the study or the active series (ZIP with DICOMDIR, api/downloads.py), or the
  // image on screen as JPEG with the window it is shown with (PS3.18 §8.3.5.1.2).
  async download(kind) {
    const study = encodeURIComponent(this.studyUid);
    const vp = this.active;
    const series = vp.series;
    let path = `/api/studies/${study}/download`;
    let fallback = "study.zip";
    let accept = "application/zip";
    if (kind !== "study" && !series) return this.say("download.noSeries");
    if (kind === "series") {
      path = `/api/studies/${study}/series/${encodeURIComponent(series.uid)}/download`;
      fallback = "series.zip";
    } else if (kind === "jpeg") {
      const slice = series.slices[vp.index];
      const instance = encodeURIComponent(slice.instance);
      const base = `/dicomweb/studies/${study}/series/${encodeURIComponent(series.uid)}/instances/${instance}`;
      const params = new URLSearchParams({ quality: String(JPEG_QUALITY) });
      if (vp.window) params.set("window", `${vp.window.center},${vp.window.width},LINEAR`);
      path = `${slice.frames > 1 ? `${base}/frames/${slice.frame}` : base}/rendered?${params}`;
      const who = (this.study?.patientId || "image").replace(/[^A-Za-z0-9_-]/g, "_");
      fallback = `${who}-se${series.number ?? 0}-im${vp.index + 1}.jpg`;
      accept = "image/jpeg";
    }
    this.say("download.starting");
    try {
      const response = await api.request(path, { accept });
      const name = fileName(response, fallback);
      const bytes = await save(response, name, (got) => this.say("download.progress", { name, size: formatBytes(got) }));
      this.say("download.done", { name, size: formatBytes(bytes) }, 5000);
    } catch (error) {
      this.say("download.failed", { message: error.message });
    }
  }

  // A line above the images; gone after `forMs` when given.
  say(key, params = {}, forMs = 0) {
    clearTimeout(this.statusTimer);
    this.status.textContent = t(key, params);
    if (forMs) this.statusTimer = setTimeout(() => (this.status.textContent = ""), forMs);
  }

  togglePlay() {
    if (this.active.playing) this.active.stop();
    else this.play();
    this.playButton.textContent = t(this.active.playing ? "tool.pause" : "tool.play");
    this.playButton.classList.toggle("on", Boolean(this.active.playing));
  }

  play() {
    this.active.play(Number(this.fpsSelect.value));
  }

  key(event) {
    if (event.target.closest?.("input:not(.vp-scrollbar), select, textarea") || event.altKey || event.metaKey) return;
    const vp = this.active;
    const steps = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
    if (event.key in steps) vp.step(steps[event.key]);
    else if (event.key === "Home") vp.setIndex(0, -1);
    else if (event.key === "End") vp.setIndex(vp.count - 1, 1);
    else if (/^[1-7]$/.test(event.key)) this.preset(PRESET_ORDER[Number(event.key) - 1]);
    else if (event.key === "0") vp.setWindow(null);
    else if (event.key === "i" || event.key === "I") vp.toggleInvert();
    else if (event.key === "f" || event.key === "F") vp.fit();
    else if (event.key === "r" || event.key === "R") vp.reset();
    else if (event.key === "+" || event.key === "=") vp.zoomBy(1.25);
    else if (event.key === "-") vp.zoomBy(0.8);
    else if (event.key === " ") this.togglePlay();
    else if (event.key === "l" || event.key === "L") this.toggleLink();
    else if (event.key === "Tab" && this.grid.classList.contains("layout-2")) {
      this.activate(this.viewports[vp === this.viewports[0] ? 1 : 0]);
    } else return;
    event.preventDefault();
  }
}

function toolButton(key, titleKey, onClick, dataset = {}) {
  const data = { ...dataset, i18n: key, i18nTitle: titleKey };
  return el("button", { type: "button", className: "tool", dataset: data, onClick });
}

// A layout button drawn as n panes side by side.
function layoutButton(n, onClick) {
  const panes = Array.from({ length: n }, () => el("span", { className: "pane" }));
  const dataset = { layout: String(n), i18nTitle: `tool.layout${n}` };
  return el("button", { type: "button", className: "tool layout", dataset, onClick }, ...panes);
}

function studyInfo(ds, firstSeries) {
  const studyDate = dicom.text(ds, "StudyDate");
  const sex = dicom.text(ds, "PatientSex");
  const age = dicom.formatAge(dicom.text(ds, "PatientAge"), dicom.text(ds, "PatientBirthDate"), studyDate);
  return {
    patientName: dicom.text(ds, "PatientName"),
    patientId: dicom.text(ds, "PatientID"),
    get sexAge() {
      return [dicom.formatSex(sex), age].filter(Boolean).join(" ");
    },
    birthDate: dicom.formatDate(dicom.text(ds, "PatientBirthDate")),
    studyDate: dicom.formatDate(studyDate),
    studyTime: dicom.formatTime(dicom.text(ds, "StudyTime")),
    description: dicom.text(ds, "StudyDescription"),
    institution: firstSeries ? dicom.text(firstSeries, "InstitutionName") : "",
  };
}

function seriesInfo(ds, studyUid, study) {
  return {
    studyUid,
    study,
    uid: dicom.text(ds, "SeriesInstanceUID"),
    number: dicom.number(ds, "SeriesNumber"),
    description: dicom.text(ds, "SeriesDescription"),
    modality: dicom.text(ds, "Modality"),
    instances: dicom.number(ds, "NumberOfSeriesRelatedInstances") || 0,
    meta: {},
  };
}

// One entry per frame: a multi-frame instance (XA cine) gives all its frames.
function sliceList(instances) {
  const slices = [];
  for (const ds of instances) {
    const instance = dicom.text(ds, "SOPInstanceUID");
    const frames = dicom.number(ds, "NumberOfFrames") || 1;
    const location = dicom.number(ds, "SliceLocation");
    for (let frame = 1; frame <= frames; frame++) slices.push({ instance, frame, frames, location });
  }
  return slices;
}

// The values the pixels can take after the Modality LUT (PS3.3 C.7.6.3, C.11.1):
// where a window drag starts when the file names no window.
function storedRange(ds) {
  const bits = dicom.number(ds, "BitsStored");
  if (!bits) return null;
  const signed = dicom.number(ds, "PixelRepresentation") === 1;
  const slope = dicom.number(ds, "RescaleSlope") ?? 1;
  const intercept = dicom.number(ds, "RescaleIntercept") ?? 0;
  const low = signed ? -(2 ** (bits - 1)) : 0;
  const high = signed ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
  const [min, max] = [intercept + slope * low, intercept + slope * high].sort((a, b) => a - b);
  return { center: (min + max) / 2, width: Math.max(max - min, 1) };
}

function closestFps(fps) {
  return String(FPS_CHOICES.reduce((best, f) => (Math.abs(f - fps) < Math.abs(best - fps) ? f : best)));
}
