// Our own server only: a short-lived access token and a refresh token from
// POST /api/auth/token, kept in sessionStorage (gone when the tab closes). The access
// token is sent on every request and renewed with the refresh token shortly before it
// expires, or once when the server refuses it (401); signing out revokes the refresh token.
const TOKEN = "pacs.token";
const USER = "pacs.user";
const REFRESH = "pacs.refresh";
const EXPIRES = "pacs.expires"; // when the access token expires, in ms since the epoch
const EARLY_MS = 30_000; // renew this long before expiry: clocks and slow links differ

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
  keep(await response.json());
  sessionStorage.setItem(USER, user);
}

// Whether the server offers sign-in through the hospital's identity provider.
export async function ssoEnabled() {
  try {
    const response = await fetch("/api/auth/oidc");
    return response.ok && (await response.json()).enabled === true;
  } catch {
    return false;
  }
}

export function signOut() {
  const refreshToken = sessionStorage.getItem(REFRESH);
  if (refreshToken) {
    // keepalive: the revocation goes out even if the page is left right away.
    fetch("/api/auth/logout", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: refreshToken }),
      keepalive: true,
    }).catch(() => {});
  }
  for (const key of [TOKEN, USER, REFRESH, EXPIRES]) sessionStorage.removeItem(key);
}

function keep(tokens) {
  sessionStorage.setItem(TOKEN, tokens.access_token);
  if (tokens.refresh_token) sessionStorage.setItem(REFRESH, tokens.refresh_token);
  if (tokens.expires_in) {
    sessionStorage.setItem(EXPIRES, String(Date.now() + tokens.expires_in * 1000));
  }
}

// One renewal at a time: every request that needs it waits for the same one (a refresh
// token works once, so two renewals would sign the second out). Resolves to success.
let refreshing = null;
function refresh() {
  const refreshToken = sessionStorage.getItem(REFRESH);
  if (!refreshToken) return Promise.resolve(false);
  refreshing ??= fetch("/api/auth/refresh", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: refreshToken }),
  })
    .then(async (response) => {
      if (!response.ok) return false;
      keep(await response.json());
      return true;
    })
    .catch(() => false)
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

export async function request(path, { accept, signal, method = "GET", body } = {}) {
  const expires = Number(sessionStorage.getItem(EXPIRES) || 0);
  if (expires && Date.now() > expires - EARLY_MS) await refresh();
  const sent = body === undefined ? undefined : JSON.stringify(body);
  const attempt = () => {
    const headers = { Authorization: `Bearer ${token()}` };
    if (accept) headers.Accept = accept;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, { headers, signal, method, body: sent });
  };
  let response = await attempt();
  if (response.status === 401 && (await refresh())) response = await attempt();
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

// A change (POST, PATCH, DELETE) with a JSON body; the JSON answer.
export async function send(method, path, body) {
  return json(path, { method, body });
}

// Who is signed in: {username, role}, asked once per token.
let me = null;
export function whoAmI() {
  if (me?.token !== token()) {
    const promise = json("/api/me").catch((error) => {
      me = null; // asked again next time
      throw error;
    });
    me = { token: token(), promise };
  }
  return me.promise;
}

export async function blob(path, options = {}) {
  const response = await request(path, options);
  return response.blob();
}

export async function reason(response) {
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

// An OpenID Connect sign-in ends at #/oidc?access_token=...: keep the tokens, then take
// them out of the address bar and the history before anything else reads the URL.
const handover = /^#\/oidc\?(.*)$/.exec(location.hash);
if (handover) {
  const tokens = Object.fromEntries(new URLSearchParams(handover[1]));
  keep({ ...tokens, expires_in: Number(tokens.expires_in) });
  sessionStorage.setItem(USER, tokens.username || "");
  const next = sessionStorage.getItem("pacs.next");
  sessionStorage.removeItem("pacs.next");
  const target = next?.startsWith("#/study/") ? next : "#/worklist";
  history.replaceState(null, "", `${location.pathname}${location.search}${target}`);
}
