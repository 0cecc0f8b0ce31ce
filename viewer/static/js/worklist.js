// The worklist: GET /api/worklist (studies newest first, with the sending site and
// the number of images), filters, paging. A row opens the study.
import * as api from "./api.js";
import * as dicom from "./dicom.js";
import { el, label } from "./dom.js";
import { t, translate, onLanguage } from "./i18n.js";

const PAGE = 50;
const MODALITIES = ["CT", "MR", "XA", "CR", "DX", "US", "MG", "NM", "PT", "RF"];
const COLUMNS = [
  ["patient", "wl.col.patient"],
  ["id", "wl.col.id"],
  ["sexAge", "wl.col.sexAge"],
  ["date", "wl.col.date"],
  ["modalities", "wl.col.modalities"],
  ["description", "wl.col.description"],
  ["site", "wl.col.site"],
  ["images", "wl.col.images"],
  ["report", "wl.col.report"],
];

// Filters survive a trip to a study and back (not a reload: they may name a patient).
const state = { filters: {}, offset: 0 };

export function showWorklist(container) {
  const inputs = {
    name: field("search", "wl.name", "name"),
    patient_id: field("search", "wl.patientId", "patient_id"),
    accession: field("search", "wl.accession", "accession"),
    date_from: field("date", "wl.dateFrom", "date_from"),
    date_to: field("date", "wl.dateTo", "date_to"),
    modality: el(
      "select",
      { name: "modality", "aria-label": "modality" },
      label("option", "wl.anyModality", { value: "" }),
      ...MODALITIES.map((m) => el("option", { value: m, text: m })),
    ),
    site: field("search", "wl.site", "site"),
  };
  for (const [key, input] of Object.entries(inputs)) input.value = state.filters[key] || "";
  const status = el("div", { className: "wl-status", role: "status" });
  const body = el("tbody");
  const prev = el("button", { type: "button", className: "tool", dataset: { i18n: "wl.prev" } });
  const next = el("button", { type: "button", className: "tool", dataset: { i18n: "wl.next" } });
  const range = el("span", { className: "wl-range" });
  let generation = 0;

  async function search(offset = 0) {
    state.offset = offset;
    state.filters = Object.fromEntries(Object.entries(inputs).map(([k, input]) => [k, input.value.trim()]));
    const mine = ++generation;
    status.textContent = t("wl.loading");
    try {
      const page = await api.json(`/api/worklist${api.query({ ...state.filters, limit: PAGE, offset })}`);
      if (mine !== generation) return; // a newer search answered first
      body.replaceChildren(...page.items.map(row));
      status.textContent = page.items.length ? "" : t("wl.none");
      prev.disabled = offset === 0;
      next.disabled = !page.more;
      range.dataset.from = String(page.items.length ? offset + 1 : 0);
      range.dataset.to = String(offset + page.items.length);
      range.textContent = t("wl.page", { from: range.dataset.from, to: range.dataset.to });
    } catch (error) {
      if (mine === generation) status.textContent = t("wl.error", { message: error.message });
    }
  }

  let typing = null;
  const form = el(
    "form",
    {
      className: "wl-filters",
      onSubmit: (event) => {
        event.preventDefault();
        search(0);
      },
      onInput: (event) => {
        // Search as the name is typed, after a pause; other fields on Enter/change.
        clearTimeout(typing);
        if (event.target.type === "search") typing = setTimeout(() => search(0), 300);
      },
      onChange: (event) => event.target.type !== "search" && search(0),
    },
    ...Object.entries(inputs).map(([key, input]) =>
      el("label", { className: `wl-field wl-${key}` }, label("span", input.dataset.labelKey || "wl.modality"), input),
    ),
    el("button", { type: "submit", className: "tool primary", dataset: { i18n: "wl.search" } }),
    el("button", {
      type: "button",
      className: "tool",
      dataset: { i18n: "wl.clear" },
      onClick: () => {
        Object.values(inputs).forEach((input) => (input.value = ""));
        search(0);
      },
    }),
  );
  prev.addEventListener("click", () => search(Math.max(state.offset - PAGE, 0)));
  next.addEventListener("click", () => search(state.offset + PAGE));
  const table = el(
    "table",
    { className: "worklist" },
    el("thead", {}, el("tr", {}, ...COLUMNS.map(([key, text]) => label("th", text, { className: `c-${key}` })))),
    body,
  );
  container.replaceChildren(
    el(
      "div",
      { className: "wl" },
      form,
      status,
      el("div", { className: "wl-table" }, table),
      el("div", { className: "wl-paging" }, prev, range, next),
    ),
  );
  translate(container);
  const stop = onLanguage(() => search(state.offset));
  search(state.offset);
  inputs.name.focus();
  return stop;
}

function field(type, labelKey, name) {
  return el("input", { type, name, dataset: { labelKey, i18nPlaceholder: labelKey }, autocomplete: "off" });
}

function open(uid) {
  location.hash = `#/study/${encodeURIComponent(uid)}`;
}

function row(item) {
  const cells = {
    patient: dicom.personName(item.patient_name),
    id: item.patient_id,
    sexAge: [dicom.formatSex(item.patient_sex), dicom.formatAge(item.patient_age, item.patient_birth_date, item.study_date)]
      .filter(Boolean)
      .join(" / "),
    date: `${dicom.formatDate(item.study_date)} ${dicom.formatTime(item.study_time)}`.trim(),
    modalities: item.modalities.join(" "),
    description: item.study_description,
    site: item.source_site,
    images: String(item.number_of_instances),
    report: item.report ? t(`report.status.${item.report}`) : "—", // the newest version
  };
  const node = el(
    "tr",
    {
      tabindex: "0",
      dataset: { study: item.study_instance_uid },
      onClick: () => open(item.study_instance_uid),
      onKeydown: (event) => event.key === "Enter" && open(item.study_instance_uid),
    },
    ...COLUMNS.map(([key]) => el("td", { className: `c-${key}`, text: cells[key] })),
  );
  if (item.report) node.querySelector(".c-report").dataset.status = item.report;
  return node;
}
