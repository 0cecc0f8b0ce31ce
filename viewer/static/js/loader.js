// Rendered images over a possibly thin link: a bounded cache of JPEG blobs and a
// priority queue of fetches shared by every viewport.
//
// Each viewport hands over its wish list (current slice first, then the slices
// ahead in the scroll direction) whenever its position changes; the list replaces
// that viewport's earlier wishes, so a radiologist who scrolls on never waits for
// slices he has left behind. At most MAX_IN_FLIGHT fetches run (the browser's six
// connections per origin, minus one for everything else). The browser's HTTP cache
// (the images' ETag and Cache-Control) is the second level behind this one.
// `latency`, how long an image takes to come, tells the viewports how thin the link
// is: they ask for smaller previews, and further ahead, when it is long.
import * as api from "./api.js";

const MAX_IN_FLIGHT = 5;
const CACHE_BYTES = 192 * 1024 * 1024;
export const THIN_LINK_MS = 150; // images taking longer than this: a thin link

class Loader {
  constructor() {
    this.cache = new Map(); // url -> Blob, in least-recently-used order
    this.bytes = 0;
    this.inFlight = new Map(); // url -> Promise<Blob>
    this.failed = new Map(); // url -> the HTTP error it got (not asked for again)
    this.wishes = new Map(); // owner -> [url, ...] best first
    this.listeners = new Set();
    this.latency = 0; // ms from asking to having an image, smoothed over recent fetches
  }

  // Images a second the link can bring: the fetches in flight over their latency.
  get capacity() {
    return this.latency ? (MAX_IN_FLIGHT * 1000) / this.latency : Infinity;
  }

  get(url) {
    const found = this.cache.get(url);
    if (found) {
      this.cache.delete(url);
      this.cache.set(url, found);
    }
    return found;
  }

  has(url) {
    return this.cache.has(url);
  }

  // Called with the url of every image that arrives.
  onLoad(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  want(owner, urls) {
    const open = (url) => !this.cache.has(url) && !this.inFlight.has(url) && !this.failed.has(url);
    this.wishes.set(owner, urls.filter(open));
    this.pump();
  }

  forget(owner) {
    this.wishes.delete(owner);
  }

  // Fetch now, whatever the queue holds (the slice on screen).
  fetch(url) {
    if (this.cache.has(url)) return Promise.resolve(this.get(url));
    if (this.inFlight.has(url)) return this.inFlight.get(url);
    if (this.failed.has(url)) return Promise.reject(this.failed.get(url));
    const started = performance.now();
    const promise = api
      .blob(url)
      .then((blob) => {
        const ms = performance.now() - started;
        this.latency = this.latency ? 0.8 * this.latency + 0.2 * ms : ms;
        this.store(url, blob);
        return blob;
      })
      .catch((error) => {
        // A slice the server cannot render (422, 404) fails the same way next time.
        if (error instanceof api.HttpError && error.status !== 401) this.failed.set(url, error);
        throw error;
      })
      .finally(() => {
        this.inFlight.delete(url);
        this.pump();
      });
    this.inFlight.set(url, promise);
    promise.then(() => this.listeners.forEach((listener) => listener(url))).catch(() => {});
    return promise;
  }

  store(url, blob) {
    this.cache.set(url, blob);
    this.bytes += blob.size;
    for (const [oldest, old] of this.cache) {
      if (this.bytes <= CACHE_BYTES) break;
      this.cache.delete(oldest);
      this.bytes -= old.size;
    }
  }

  pump() {
    // Round-robin over owners so two side-by-side viewports share the link.
    while (this.inFlight.size < MAX_IN_FLIGHT) {
      let started = false;
      for (const [owner, urls] of this.wishes) {
        while (urls.length && (this.cache.has(urls[0]) || this.inFlight.has(urls[0]) || this.failed.has(urls[0]))) {
          urls.shift();
        }
        const url = urls.shift();
        if (url === undefined) {
          this.wishes.delete(owner);
          continue;
        }
        this.fetch(url).catch(() => {});
        started = true;
        if (this.inFlight.size >= MAX_IN_FLIGHT) return;
      }
      if (!started) return;
    }
  }
}

export const loader = new Loader();
