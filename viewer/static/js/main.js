// The viewer's entry point: top bar (user, language, sign-out) and a hash router
// (#/login, #/worklist, #/study/UID, and #/share/TOKEN, which needs no sign-in).
// No page ever reloads while a study is read.
import * as api from "./api.js";
import { el, label } from "./dom.js";
import { LANGUAGES, language, setLanguage, t, translate } from "./i18n.js";
import { showShare } from "./share.js";
import { showStudy } from "./study.js";
import { showWorklist } from "./worklist.js";

const app = document.getElementById("app");
const user = document.getElementById("user");
const signOutButton = document.getElementById("sign-out");
const languageSelect = document.getElementById("language");
let leave = null; // the current view's clean-up

for (const [code, strings] of Object.entries(LANGUAGES)) {
  languageSelect.append(el("option", { value: code, text: strings["lang.name"] }));
}
languageSelect.value = language();
languageSelect.addEventListener("change", () => setLanguage(languageSelect.value));
signOutButton.addEventListener("click", () => {
  api.signOut();
  // A fresh page: nothing of the last patient stays in memory.
  location.hash = "#/login";
  location.reload();
});
api.whenUnauthorized(() => {
  sessionStorage.setItem("pacs.expired", "1");
  sessionStorage.setItem("pacs.next", location.hash);
  location.hash = "#/login";
});

function route() {
  leave?.();
  leave = null;
  const hash = location.hash || "#/worklist";
  const signedIn = Boolean(api.token());
  document.body.classList.toggle("signed-in", signedIn);
  user.textContent = api.username();
  const share = /^#\/share\/([^/]+)$/.exec(hash);
  if (share) {
    // A share link's holder has no account: the token (and PIN) is the credential.
    document.body.dataset.view = "share";
    leave = showShare(app, decodeURIComponent(share[1]));
    return;
  }
  if (!signedIn || hash === "#/login") {
    if (signedIn) api.signOut();
    // A link to a study opened without a token leads there once signed in.
    if (hash.startsWith("#/study/")) sessionStorage.setItem("pacs.next", hash);
    document.body.classList.remove("signed-in");
    user.textContent = "";
    leave = showLogin();
    return;
  }
  const study = /^#\/study\/(.+)$/.exec(hash);
  document.body.dataset.view = study ? "study" : "worklist";
  if (study) leave = showStudy(app, decodeURIComponent(study[1]));
  else leave = showWorklist(app);
}

function showLogin() {
  document.body.dataset.view = "login";
  const username = el("input", { name: "username", autocomplete: "username", required: true });
  const password = el("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const message = el("div", { className: "login-message", role: "alert" });
  // Sign-in at the hospital's identity provider, shown when the server offers it.
  const sso = el("a", { className: "tool sso", href: "/api/auth/oidc/login", hidden: true, dataset: { i18n: "login.sso" } });
  if (sessionStorage.getItem("pacs.expired")) {
    message.textContent = t("login.expired");
    sessionStorage.removeItem("pacs.expired");
  }
  const form = el(
    "form",
    {
      className: "login",
      onSubmit: async (event) => {
        event.preventDefault();
        message.textContent = "";
        try {
          await api.signIn(username.value, password.value);
          const next = sessionStorage.getItem("pacs.next");
          sessionStorage.removeItem("pacs.next");
          const target = next?.startsWith("#/study/") ? next : "#/worklist";
          if (location.hash === target) route();
          else location.hash = target;
        } catch (error) {
          message.textContent = t(loginProblem(error), { status: error.status || error.message });
        }
      },
    },
    label("h1", "login.title"),
    el("label", {}, label("span", "login.username"), username),
    el("label", {}, label("span", "login.password"), password),
    el("button", { type: "submit", className: "tool primary", dataset: { i18n: "login.submit" } }),
    sso,
    message,
  );
  api.ssoEnabled().then((enabled) => {
    sso.hidden = !enabled;
  });
  app.replaceChildren(el("div", { className: "login-page" }, form));
  translate(app);
  username.focus();
  return null;
}

// What the sign-in form says when the server refuses (the API's reasons, translated).
function loginProblem(error) {
  if (error.status === 429) return "login.busy";
  if (error.status !== 401) return "login.error";
  if (/locked/.test(error.message)) return "login.locked";
  if (/disabled/.test(error.message)) return "login.disabled";
  return "login.failed";
}

window.addEventListener("hashchange", route);
translate(document);
route();
