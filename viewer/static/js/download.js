// Saving what the server sends (ZIPs, PDFs, JPEGs) to the user's disk. The viewer
// authenticates with a bearer token (or a share link's PIN header), which a plain
// link cannot carry, so a file is fetched, gathered into a Blob while its progress
// is reported, and handed to the browser's download through an object URL.
// The whole file passes through the tab's memory: fine for the studies a referring
// doctor takes away; a very large study is better fetched with a DICOM client.
import { el } from "./dom.js";

// Bytes as people read them: "850 kB", "12.4 MB".
export function formatBytes(bytes) {
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1e6) return `${Math.round(bytes / 1000)} kB`;
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

// The file name the server gave (Content-Disposition, RFC 6266), else `fallback`.
export function fileName(response, fallback) {
  const header = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(header);
  return match ? match[1] : fallback;
}

// Read `response` to the end, telling `onProgress(bytes)` as it comes, and save it.
export async function save(response, fallback, onProgress = () => {}) {
  const parts = [];
  let received = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    received += value.length;
    onProgress(received);
  }
  const type = response.headers.get("Content-Type") || "application/octet-stream";
  const url = URL.createObjectURL(new Blob(parts, { type }));
  const link = el("a", { href: url, download: fileName(response, fallback), hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  // The download has taken its copy once the click is handled.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return received;
}

// Open a PDF (or image) in a new tab from its bytes.
export async function open(response) {
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  window.open(url, "_blank", "noopener");
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
