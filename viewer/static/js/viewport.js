// One image viewport: a stack of server-rendered slices on a canvas.
//
// Slices are JPEGs from our DICOMweb `rendered` resources (PS3.18 §10.4): the
// server applies the window (PS3.18 §8.3.5.1.2 `window=center,width,LINEAR`), so a
// thin link carries small images, never raw pixels. While the radiologist scrolls,
// plays cine or drags the window, slices are asked for at PREVIEW_QUALITY, the
// ones ahead in the scroll direction first; once he stops for SETTLE_MS the slice on
// screen is asked for again at FULL_QUALITY. Zoom, pan and invert are done here on
// the canvas and cost no request. Each slice shown is logged as a performance mark
// named "viewer:slice" (detail: index, quality), which the tests and bench/viewer.py
// read to prove that no slice was skipped.
import { loader, THIN_LINK_MS } from "./loader.js";
import { el } from "./dom.js";
import { t } from "./i18n.js";

const FULL_QUALITY = 90;
const PREVIEW_QUALITY = 40;
const SETTLE_MS = 200; // no scroll for this long: ask for full quality
const WL_DEBOUNCE_MS = 120; // right-drag: ask for the new window after this pause
const AHEAD = 12; // slices prefetched in the scroll direction
const BEHIND = 3;
const BACKGROUND = 250; // at rest, previews this many slices either way are fetched
const MAX_SIDE = 1024; // previews of larger images are rendered to fit this
const BITMAPS = 40; // decoded images kept: the slices ahead, and for scrolling back
const STALL_MS = 120; // a step waits this long for its slice's image, then moves on
const MAX_BACKLOG = 6; // steps queued beyond this are jumped over
const MAX_MARKS = 5000;
const WHEEL_NOTCH = 50; // pixels of wheel travel per slice

export class Viewport {
  constructor({ onActivate, onWindow, onMove, number }) {
    this.onActivate = onActivate;
    this.onMove = onMove; // told when the slice changes (linked scrolling)
    this.onWindow = onWindow; // told when the window changes (the toolbar shows it)
    this.canvas = el("canvas", { className: "vp-canvas" });
    this.corners = ["tl", "tr", "bl", "br"].map((c) => el("div", { className: `vp-corner vp-${c}` }));
    this.message = el("div", { className: "vp-message" });
    this.scrollbar = el("input", {
      type: "range",
      className: "vp-scrollbar",
      min: "0",
      max: "0",
      step: "1",
      value: "0",
      "aria-label": "slice",
      onInput: () => this.setIndex(Number(this.scrollbar.value)),
    });
    this.filter = windowFilter(`vp-window-${number}`);
    this.root = el(
      "div",
      { className: "viewport", tabindex: "0", dataset: { viewport: String(number) } },
      this.filter.ownerSVGElement,
      this.canvas,
      ...this.corners,
      this.message,
      this.scrollbar,
    );
    this.bitmaps = new Map();
    this.shown = null; // {url, bitmap, index, quality}
    this.series = null;
    this.tool = "wl";
    this.reset(false);
    this.listen();
    new ResizeObserver(() => this.resize()).observe(this.root);
    this.decoding = new Set();
    this.queued = 0; // steps asked for and not yet taken (see step)
    this.queuedSince = null;
    this.stalls = []; // when slices were passed without their image (see schedule)
    this.unsubscribe = loader.onLoad((url) => this.arrived(url));
  }

  // --- state ------------------------------------------------------------------------

  load(series) {
    this.stop();
    this.resize(); // the canvas's real size decides the size images are asked for
    this.series = series.slices.length ? series : null; // nothing to show: "choose a series"
    this.index = 0;
    this.direction = 1;
    this.shown = null;
    this.queued = 0;
    this.queuedSince = null;
    for (const bitmap of this.bitmaps.values()) bitmap.close();
    this.bitmaps.clear();
    this.reset(false);
    this.requestPaint();
    for (const key of ["shownIndex", "quality", "window"]) delete this.root.dataset[key];
    this.root.classList.toggle("single", series.slices.length <= 1);
    if (!this.series) return;
    this.scrollbar.max = String(Math.max(series.slices.length - 1, 0));
    this.scrollbar.value = "0";
    this.root.dataset.series = series.uid;
    this.root.dataset.count = String(series.slices.length);
    this.settled();
  }

  get count() {
    return this.series ? this.series.slices.length : 0;
  }

  reset(refresh = true) {
    this.window = null; // null: the window stored in the images
    this.windowName = null;
    this.invert = false;
    this.zoom = 1;
    this.pan = { x: 0, y: 0 };
    if (refresh) {
      this.settled();
      this.onWindow?.(this);
    }
  }

  fit() {
    this.zoom = 1;
    this.pan = { x: 0, y: 0 };
    this.requestPaint();
    this.askAgainSoon();
  }

  toggleInvert() {
    this.invert = !this.invert;
    this.requestPaint();
  }

  setWindow(window, name = null) {
    this.window = window && { center: Math.round(window.center), width: Math.max(1, Math.round(window.width)) };
    this.windowName = name;
    this.settled();
    this.onWindow?.(this);
  }

  // The window a drag starts from: the one set, the file's, or the pixels' range.
  currentWindow() {
    if (this.window) return this.window;
    const meta = this.series?.meta || {};
    if (meta.windowCenter !== undefined && meta.windowWidth) {
      return { center: meta.windowCenter, width: meta.windowWidth };
    }
    return meta.fullRange || { center: 128, width: 256 };
  }

  // Arrow keys and wheel notches move one slice at a time, at most one a frame, and
  // wait (up to STALL_MS) for the next slice's image: a held key paints every slice
  // whose image is here instead of jumping over the ones still being decoded. A
  // backlog beyond MAX_BACKLOG is jumped over, so the image never trails far behind.
  step(delta) {
    if (!this.count) return;
    const clamp = (i) => Math.min(Math.max(i, 0), this.count - 1);
    if (Math.abs(delta) !== 1 || this.playing) {
      this.queued = 0;
      this.setIndex(clamp(this.index + delta), Math.sign(delta));
      return;
    }
    if (Math.sign(this.queued) !== delta) this.queued = 0; // turned round
    this.queued += delta;
    if (Math.abs(this.queued) > MAX_BACKLOG) {
      this.setIndex(clamp(this.index + delta), delta);
      this.queued -= delta;
    }
    this.queuedSince ??= performance.now();
    this.direction = delta;
    this.schedule();
    this.requestPaint();
  }

  advance(now) {
    if (!this.queued) return;
    const direction = Math.sign(this.queued);
    const next = this.index + direction;
    if (next < 0 || next >= this.count) {
      this.queued = 0;
      this.queuedSince = null;
      return;
    }
    // Wait a little for the next slice, unless the link is known to be behind.
    const ready = this.ready(next);
    if (!ready && !this.behind && now - this.queuedSince < STALL_MS) return;
    if (!ready && !this.behind) this.stalls.push(now);
    this.queued -= direction;
    this.queuedSince = this.queued ? now : null;
    this.setIndex(next, direction);
  }

  setIndex(index, direction) {
    if (!this.count || index === this.index || index < 0 || index >= this.count) return;
    const now = performance.now();
    const interval = now - (this.movedAt || 0);
    const speed = interval < 500 ? 1000 / Math.max(interval, 1) : 0;
    this.speed = this.speed && speed ? 0.7 * this.speed + 0.3 * speed : speed; // slices/s
    this.movedAt = now;
    this.direction = direction || Math.sign(index - this.index) || this.direction;
    this.index = index;
    this.scrollbar.value = String(index);
    this.moving();
    this.onMove?.(this);
  }

  // The slice nearest a slice location (mm), or at the same fraction of the stack.
  nearest(location, fraction) {
    const slices = this.series?.slices || [];
    if (location !== null && slices.length && slices.every((s) => s.location !== null)) {
      let best = 0;
      for (let i = 1; i < slices.length; i++) {
        if (Math.abs(slices[i].location - location) < Math.abs(slices[best].location - location)) best = i;
      }
      return best;
    }
    return Math.round(fraction * Math.max(slices.length - 1, 0));
  }

  // Scrolling, cine or dragging: previews, prefetch ahead; full quality once it stops.
  moving() {
    this.busy = true;
    clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => this.settled(), SETTLE_MS);
    this.schedule();
    this.requestPaint();
  }

  settled() {
    this.busy = Boolean(this.playing);
    this.speed = 0;
    clearTimeout(this.settleTimer);
    this.schedule();
    this.requestPaint();
  }

  // --- urls and fetching ------------------------------------------------------------

  url(index, quality) {
    const s = this.series;
    const slice = s.slices[index];
    const base = `/dicomweb/studies/${s.studyUid}/series/${s.uid}/instances/${slice.instance}`;
    const path = slice.frames > 1 ? `${base}/frames/${slice.frame}/rendered` : `${base}/rendered`;
    const params = new URLSearchParams({ quality: String(quality) });
    if (this.window) params.set("window", `${this.window.center},${this.window.width},LINEAR`);
    const side = this.side(quality);
    if (side) params.set("viewport", `${side},${side}`);
    return `${path}?${params}`;
  }

  // The size to render at, when smaller than the image: previews at most MAX_SIDE
  // (half the image on a thin link: a quarter of the bytes, upscaled here); full
  // quality as many pixels as the canvas shows at this zoom, in steps of 512 so
  // that zooming a little does not ask again. A 512x512 CT is always sent whole.
  side(quality) {
    const size = this.series.meta.size;
    if (!size) return null;
    const whole = Math.max(size.columns, size.rows);
    let side;
    if (quality === PREVIEW_QUALITY) side = this.thin ? Math.max(Math.ceil(whole / 2), 128) : MAX_SIDE;
    else side = Math.ceil((Math.max(this.canvas.width, this.canvas.height) * this.zoom) / 512) * 512;
    return side < whole ? side : null;
  }

  urlsOf(index) {
    return [this.url(index, FULL_QUALITY), this.url(index, PREVIEW_QUALITY)];
  }

  // Best image at hand for a slice: full quality, else the preview.
  available(index) {
    const [full, preview] = this.urlsOf(index);
    if (loader.has(full)) return { url: full, quality: "full" };
    if (loader.has(preview)) return { url: preview, quality: "preview" };
    return null;
  }

  // The slice's image is decoded and can be painted this frame (else decode it).
  ready(index) {
    const best = this.available(index);
    if (!best) return false;
    if (this.bitmaps.has(best.url)) return true;
    this.decode(best.url);
    return false;
  }

  // What to fetch next, best first (the loader keeps at most five on the way).
  //
  // At rest: the slice on screen at full quality, then previews around it. Moving:
  // previews, the slice on screen and the ones ahead in the scroll direction. When
  // the link falls behind the scroll (three slices in a second passed without their
  // image), fetching the slice on screen or the next ones is wasted: they are passed
  // before they arrive. Then, until the scroll stops, only every `stride`-th slice
  // (about as many as the link can bring: five fetches over their latency), from
  // where the scroll will be in twice the link's latency, is asked for; the scroll
  // shows those and steps over the others.
  schedule() {
    if (!this.count) return;
    const now = performance.now();
    const wanted = new Map(); // url -> slice index, best first
    const previewOf = (i) => {
      if (this.playing) i = (i + this.count) % this.count;
      if (i >= 0 && i < this.count && !loader.has(this.url(i, FULL_QUALITY))) {
        wanted.set(this.url(i, PREVIEW_QUALITY), i);
      }
    };
    if (!this.busy) {
      // Previews keep one size while moving; a thin link stays thin until images
      // come in half the time (one slow or fast image does not flip it).
      this.thin = loader.latency > (this.thin ? THIN_LINK_MS / 2 : THIN_LINK_MS);
      const full = this.url(this.index, FULL_QUALITY);
      loader.fetch(full).catch((error) => this.fail(full, error));
    }
    if (!this.busy || this.playing) {
      this.behind = false;
      this.stalls = [];
    } else if (!this.behind) {
      this.stalls = this.stalls.filter((t) => now - t < 1000);
      this.behind = this.stalls.length >= 3;
    }
    if (this.busy && !this.behind) previewOf(this.index);
    // The first image of a series goes alone: prefetching waits until it is here.
    if (this.shown || this.available(this.index)) {
      const ahead = Math.abs(this.queued) + (this.playing ? Math.max(AHEAD, 2 * this.fps) : AHEAD);
      if (this.behind) {
        const stride = Math.min(Math.max(Math.ceil(this.speed / loader.capacity), 1), 8);
        let i = this.index + this.direction * Math.ceil((2 * this.speed * loader.latency) / 1000);
        for (let found = 0; found < ahead && i >= 0 && i < this.count; i += this.direction) {
          if (i % stride === 0) {
            previewOf(i);
            found += 1;
          }
        }
      } else {
        for (let k = 1; k <= ahead; k++) {
          const i = this.index + this.direction * k;
          previewOf(i);
          if (k <= BEHIND) previewOf(this.index - this.direction * k);
          if (i >= 0 && i < this.count) this.ready(i); // decode what is here already
        }
      }
      // At rest, the rest of the series comes in the background, nearest first, so
      // that the next scroll finds its slices here.
      for (let k = 1; !this.busy && k <= Math.min(this.count, BACKGROUND); k++) {
        previewOf(this.index + this.direction * k);
        previewOf(this.index - this.direction * k);
      }
    }
    this.wanted = wanted;
    loader.want(this, [...wanted.keys()]);
  }

  // An image arrived: decode it now if it is on screen or ahead, so that painting it
  // later costs nothing.
  arrived(url) {
    if (!this.series) return;
    if (this.urlsOf(this.index).includes(url)) {
      this.decode(url);
      if (!this.shown) this.schedule();
    } else if (Math.abs((this.wanted?.get(url) ?? Infinity) - this.index) <= AHEAD + MAX_BACKLOG) {
      this.decode(url);
    }
  }

  decode(url) {
    if (this.bitmaps.has(url) || this.decoding.has(url)) return;
    const blob = loader.get(url);
    if (!blob) return;
    const series = this.series;
    this.decoding.add(url);
    createImageBitmap(blob).then(
      (bitmap) => {
        this.decoding.delete(url);
        if (this.series !== series) return bitmap.close();
        this.bitmaps.set(url, bitmap);
        for (const [key, old] of this.bitmaps) {
          if (this.bitmaps.size <= BITMAPS) break;
          if (key === this.shown?.url) continue;
          old.close();
          this.bitmaps.delete(key);
        }
        this.requestPaint();
      },
      (error) => {
        this.decoding.delete(url);
        this.fail(url, error);
      },
    );
  }

  fail(url, error) {
    if (!this.series || !this.urlsOf(this.index).includes(url)) return;
    this.message.textContent = error.message;
    this.requestPaint(); // the overlay stops saying "loading"
  }

  // --- painting -----------------------------------------------------------------------

  requestPaint() {
    if (this.paintRequested) return;
    this.paintRequested = true;
    requestAnimationFrame(() => {
      this.paintRequested = false;
      this.paint();
    });
  }

  paint() {
    if (this.destroyed) return; // a frame asked for before the study was left: its bitmaps are closed
    if (this.series) {
      this.advance(performance.now());
      const best = this.available(this.index);
      if (best && best.url !== this.shown?.url && this.ready(this.index)) {
        this.message.textContent = "";
        const bitmap = this.bitmaps.get(best.url);
        // The window it was rendered with: a window drag reshapes it until the new one comes.
        const voi = this.window || this.fileWindow();
        this.shown = { url: best.url, bitmap, index: this.index, quality: best.quality, window: voi };
        this.mark(this.index, best.quality);
      }
      if (this.queued) this.requestPaint();
    }
    this.draw();
    this.overlay();
  }

  // Redraw only when something drawn changed: without a GPU, scaling a slice to the
  // canvas is the costliest thing a frame does.
  draw() {
    const { width, height } = this.canvas;
    const voi = this.window ? `${this.window.center},${this.window.width}` : "";
    const state = [this.shown?.url, this.zoom, this.pan.x, this.pan.y, this.invert, width, height, this.busy, voi];
    if (state.join("|") === this.drawn) return;
    this.drawn = state.join("|");
    const ctx = this.canvas.getContext("2d", { alpha: false });
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    if (!this.shown) return;
    const bitmap = this.shown.bitmap;
    const size = this.series.meta.size || { columns: bitmap.width, rows: bitmap.height };
    const scale = this.fitScale(size) * this.zoom;
    const dpr = window.devicePixelRatio || 1;
    const w = size.columns * scale;
    const h = size.rows * scale;
    ctx.imageSmoothingQuality = this.busy ? "low" : "high"; // cheap while scrolling
    const filters = [];
    if (this.reshape()) filters.push(`url(#${this.filter.id})`);
    if (this.invert) filters.push("invert(1)");
    ctx.filter = filters.join(" ") || "none";
    ctx.drawImage(bitmap, (width - w) / 2 + this.pan.x * dpr, (height - h) / 2 + this.pan.y * dpr, w, h);
    ctx.filter = "none";
  }

  // The file's own window, when its metadata named one.
  fileWindow() {
    const meta = this.series.meta;
    return meta.windowWidth ? { center: meta.windowCenter, width: meta.windowWidth } : null;
  }

  // While a new window is on its way, the grey levels on screen are remapped to it
  // (PS3.3 C.11.2.1.2: output is linear in the value within a window, so one window's
  // output is an affine function of another's): instant feedback for a right-drag,
  // exact inside the old window, clipped outside it. Not for colour images, which
  // the server does not window.
  reshape() {
    const from = this.shown?.window;
    const to = this.window;
    const photometric = this.series.meta.photometric || "";
    if (!from || !to || !photometric.startsWith("MONOCHROME")) return false;
    if (from.center === to.center && from.width === to.width) return false;
    const slope = from.width / to.width;
    let intercept = (from.center - from.width / 2 - to.center + to.width / 2) / to.width;
    if (photometric === "MONOCHROME1") intercept = 1 - slope - intercept; // shown inverted
    for (const func of this.filter.querySelectorAll("*")) {
      if (!func.localName.startsWith("feFunc")) continue;
      func.setAttribute("slope", String(slope));
      func.setAttribute("intercept", String(intercept));
    }
    return true;
  }

  fitScale(size) {
    return Math.min(this.canvas.width / size.columns, this.canvas.height / size.rows) || 1;
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(this.root.clientWidth * dpr));
    const height = Math.max(1, Math.round(this.root.clientHeight * dpr));
    if (width !== this.canvas.width || height !== this.canvas.height) {
      this.canvas.width = width;
      this.canvas.height = height;
      this.requestPaint();
      this.askAgainSoon();
    }
  }

  mark(index, quality) {
    const data = this.root.dataset;
    data.shownIndex = String(index + 1);
    data.quality = quality;
    data.window = this.window ? `${this.window.center},${this.window.width}` : "";
    this.marks = (this.marks || 0) + 1;
    if (this.marks % MAX_MARKS === 0) performance.clearMarks("viewer:slice");
    performance.mark("viewer:slice", { detail: { viewport: data.viewport, index: index + 1, quality } });
  }

  overlay() {
    const [tl, tr, bl, br] = this.corners;
    if (!this.series) {
      tl.replaceChildren();
      tr.replaceChildren();
      bl.replaceChildren();
      br.replaceChildren();
      this.message.textContent = t("ov.empty");
      this.message.classList.add("note");
      return;
    }
    this.message.classList.remove("note");
    const s = this.series;
    const slice = s.slices[this.index];
    const study = s.study;
    lines(tl, [study.patientName, study.patientId, study.sexAge, study.birthDate]);
    lines(tr, [study.institution, `${study.studyDate} ${study.studyTime}`.trim(), study.description]);
    const position =
      slice.frames > 1
        ? t("ov.frame", { n: slice.frame, total: slice.frames })
        : t("ov.image", { n: this.index + 1, total: this.count });
    lines(bl, [
      t("ov.series", { number: s.number ?? "", description: s.description }),
      `${s.modality}`,
      position,
      slice.location !== null && slice.location !== undefined
        ? t("ov.location", { value: slice.location.toFixed(1) })
        : "",
      this.playing ? t("ov.fps", { value: this.fps }) : "",
    ]);
    const voi = this.window || (s.meta.windowWidth ? this.currentWindow() : null);
    const windowText = voi
      ? t("ov.window", { width: Math.round(voi.width), center: Math.round(voi.center) })
      : t("ov.windowDefault");
    const shownHere = this.shown && this.urlsOf(this.index).includes(this.shown.url);
    const size = s.meta.size || { columns: 1, rows: 1 };
    const percent = (this.zoom * this.fitScale(size) * 100) / (window.devicePixelRatio || 1);
    lines(br, [
      this.windowName ? `${windowText} (${t(`preset.${this.windowName}`)})` : windowText,
      t("ov.zoom", { value: Math.round(percent) }),
      this.invert ? t("ov.inverted") : "",
      this.shown?.quality === "preview" && shownHere ? t("ov.preview") : "",
      !shownHere && !this.urlsOf(this.index).some((url) => loader.failed.has(url)) ? t("ov.loading") : "",
    ]);
    this.root.dataset.index = String(this.index + 1);
  }

  // --- cine ---------------------------------------------------------------------------

  play(fps) {
    this.stop();
    if (this.count < 2) return;
    this.fps = fps;
    this.playing = true;
    this.direction = 1;
    this.busy = true;
    this.schedule();
    // Advance only once this frame is on screen and the next one is here: a slow
    // link slows the loop, it never skips a frame.
    this.cineTimer = setInterval(() => {
      const next = (this.index + 1) % this.count;
      if (this.shown?.index === this.index && this.ready(next)) {
        this.index = next;
        this.scrollbar.value = String(next);
        this.schedule();
        this.requestPaint();
      }
    }, 1000 / fps);
    this.root.dataset.playing = "true";
  }

  stop() {
    if (!this.playing) return;
    clearInterval(this.cineTimer);
    this.playing = false;
    delete this.root.dataset.playing;
    this.settled();
  }

  // --- mouse ----------------------------------------------------------------------------

  listen() {
    const root = this.root;
    root.addEventListener("contextmenu", (event) => event.preventDefault());
    root.addEventListener("pointerdown", () => {
      // The canvas's pointerdown prevents the default focus change: take focus here,
      // so keys scroll the images after typing in the report beside them.
      root.focus({ preventScroll: true });
      this.onActivate(this);
    });
    this.canvas.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        if (event.ctrlKey) {
          this.zoomBy(Math.exp(-event.deltaY * 0.002));
          return;
        }
        // A mouse wheel notch is one slice; a touchpad's small pixel deltas add up.
        const pixels = event.deltaMode === 0;
        if (!pixels || Math.abs(event.deltaY) >= WHEEL_NOTCH) {
          this.wheelRest = 0;
          this.step(Math.sign(event.deltaY));
          return;
        }
        this.wheelRest = (this.wheelRest || 0) + event.deltaY;
        if (Math.abs(this.wheelRest) >= WHEEL_NOTCH) {
          this.step(Math.sign(this.wheelRest));
          this.wheelRest = 0;
        }
      },
      { passive: false },
    );
    this.canvas.addEventListener("pointerdown", (event) => {
      const mode = event.button === 2 ? "wl" : event.button === 1 ? "pan" : event.button === 0 ? this.tool : null;
      if (!mode || !this.series) return;
      event.preventDefault();
      this.canvas.setPointerCapture(event.pointerId);
      this.drag = { mode, x: event.clientX, y: event.clientY, start: this.currentWindow() };
    });
    this.canvas.addEventListener("pointermove", (event) => {
      if (!this.drag) return;
      const dx = event.clientX - this.drag.x;
      const dy = event.clientY - this.drag.y;
      if (this.drag.mode === "wl") this.dragWindow(dx, dy);
      else if (this.drag.mode === "pan") {
        this.pan.x += dx;
        this.pan.y += dy;
        this.drag.x = event.clientX;
        this.drag.y = event.clientY;
        this.requestPaint();
      } else if (this.drag.mode === "zoom") {
        this.zoomBy(Math.exp(-dy * 0.01));
        this.drag.x = event.clientX;
        this.drag.y = event.clientY;
      }
    });
    const end = () => {
      if (this.drag?.mode === "wl" && this.drag.moved) {
        clearTimeout(this.wlTimer);
        this.settled();
      }
      this.drag = null;
    };
    this.canvas.addEventListener("pointerup", end);
    this.canvas.addEventListener("pointercancel", end);
  }

  // Right-drag: across = width, up/down = level, in steps that scale with the width.
  dragWindow(dx, dy) {
    const start = this.drag.start;
    const unit = Math.max(start.width / 256, 0.5);
    this.window = {
      center: Math.round(start.center + dy * unit),
      width: Math.max(1, Math.round(start.width + dx * unit)),
    };
    this.windowName = null;
    if (!this.drag.moved) this.onWindow?.(this); // no preset is lit any more
    this.drag.moved = true;
    this.requestPaint(); // the image on screen reshaped at once (see reshape)
    clearTimeout(this.wlTimer);
    this.wlTimer = setTimeout(() => this.moving(), WL_DEBOUNCE_MS);
  }

  zoomBy(factor) {
    this.zoom = Math.min(Math.max(this.zoom * factor, 0.1), 20);
    this.requestPaint();
    this.askAgainSoon();
  }

  // Zoom or a resize may need more pixels: ask once the change rests.
  askAgainSoon() {
    clearTimeout(this.sizeTimer);
    this.sizeTimer = setTimeout(() => this.series && !this.busy && this.schedule(), SETTLE_MS);
  }

  destroy() {
    this.destroyed = true;
    this.stop();
    clearTimeout(this.settleTimer);
    clearTimeout(this.wlTimer);
    clearTimeout(this.sizeTimer);
    loader.forget(this);
    this.unsubscribe();
    for (const bitmap of this.bitmaps.values()) bitmap.close();
    this.bitmaps.clear();
  }
}

// An SVG filter mapping each grey level x to slope * x + intercept (see reshape).
function windowFilter(id) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "vp-filters");
  const filter = document.createElementNS(ns, "filter");
  filter.setAttribute("id", id);
  filter.setAttribute("color-interpolation-filters", "sRGB");
  const transfer = document.createElementNS(ns, "feComponentTransfer");
  for (const channel of ["R", "G", "B"]) {
    const func = document.createElementNS(ns, `feFunc${channel}`);
    func.setAttribute("type", "linear");
    transfer.append(func);
  }
  filter.append(transfer);
  svg.append(filter);
  return filter;
}

// A corner's lines of text, replaced only when they changed (no layout otherwise).
function lines(corner, texts) {
  const shown = texts.filter(Boolean);
  const key = shown.join("\n");
  if (corner.dataset.text === key) return;
  corner.dataset.text = key;
  corner.replaceChildren(...shown.map((text) => el("div", { text })));
}
