// Our own server only: a bearer token from POST /api/auth/token, kept in
// sessionStorage (gone when the tab closes), sent on every request.
const TOKEN = "pacs.token";
const USER = "pacs.user";

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN);
}

export function username() {
  return sessionStorage.getItem(USER) || "";
}

export async function signIn(user, password) {
  const response = await fetch("/api/auth/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: user, password }),
  });
  if (!response.ok) throw new HttpError(response.status, await reason(response));
  const body = await response.json();
  sessionStorage.setItem(TOKEN, body.access_token);
  sessionStorage.setItem(USER, user);
}

export function signOut() {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(USER);
}

let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

export async function request(path, { accept, signal } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (accept) headers.Accept = accept;
  const response = await fetch(path, { headers, signal });
  if (response.status === 401) {
    signOut();
    onUnauthorized();
  }
  if (!response.ok) throw new HttpError(response.status, await reason(response));
  return response;
}

export async function json(path, options = {}) {
  const response = await request(path, { accept: "application/json", ...options });
  return response.json();
}

export async function blob(path, options = {}) {
  const response = await request(path, options);
  return response.blob();
}

async function reason(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

// A query string from an object, leaving out empty values.
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
