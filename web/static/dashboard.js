// The live dashboard: sign-in, the organizationStatsChanged subscription with
// reconnection, tiles and bar charts, the receivables panel, and the admins' drift /
// recalculate panel.

import { GraphQLWsConnection } from "./graphql-ws.js";
import * as auth from "./session.js";

// The count groups come from the schema (introspection needs no token): each field of
// OrganizationStats whose type is a `...Counts` type is a group, each of that type's
// fields but `total` a counter. Titles and labels are derived from the names.
const COUNT_TYPES = `{ __type(name: "OrganizationStats") {
  fields { name type { name fields { name } ofType { name fields { name } } } }
} }`;
const GROUPS = []; // [{ key: "loads", title: "Load status", fields: [["open", "Open"], ...] }], once read

/** "pendingPayment" -> "Pending payment", "LoadStatus" -> "Load status". */
function displayName(name) {
  const words = name.replace(/([a-z0-9])([A-Z])/g, "$1 $2").toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function groupsOf(organizationStats) {
  return organizationStats.fields.flatMap(({ name, type }) => {
    const object = type.ofType ?? type;
    if (!object.name?.endsWith("Counts")) return [];
    const fields = object.fields.map((field) => field.name).filter((field) => field !== "total");
    return [{ key: name, title: displayName(object.name.replace(/Counts$/, "")), fields: fields.map((f) => [f, displayName(f)]) }];
  });
}

const selection = (group) => `${group.key} { ${group.fields.map(([field]) => field).join(" ")} total }`;
const statsChanged = () => `subscription($orgId: ID!, $sinceVersion: Int) {
  organizationStatsChanged(orgId: $orgId, sinceVersion: $sinceVersion) {
    orgId version updatedAt lastRecalculatedAt ${GROUPS.map(selection).join(" ")}
    money { invoiced collected outstanding }
  }
}`;
const MONEY_PANEL = `query($orgId: ID!, $from: String!, $to: String!) {
  receivablesAging(orgId: $orgId, first: 5) {
    asOf buckets { current days31to60 days61to90 over90 total }
    customers { customer { name } invoices buckets { total } }
  }
  revenueByMonth(orgId: $orgId, from: $from, to: $to) { month invoiced }
}`;
const AGES = [["current", "0–30 days"], ["days31to60", "31–60 days"], ["days61to90", "61–90 days"], ["over90", "Over 90 days"]];
const DRIFT_REPORT = `query($orgId: ID!) { driftReport(orgId: $orgId) { ok checkedAt drift { counter stored actual } } }`;
const RECALCULATE = `mutation($orgId: ID!) {
  recalculateOrgStats(orgId: $orgId) { corrected { counter stored actual } stats { version } }
}`;

const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 15000;
const HIGHLIGHT_MS = 2000;
const DRIFT_EVERY_MS = 60000;
const FATAL_CODES = new Set(["FORBIDDEN", "UNAUTHENTICATED", "BAD_USER_INPUT"]);

const $ = (id) => document.getElementById(id);
const state = {
  session: null,
  connection: null,
  shown: null, // the newest stats shown; never replaced by an older version
  attempt: 0,
  retryTimer: null,
  stableTimer: null,
  retryAt: 0,
  countdown: null,
  driftTimer: null,
  stopped: true,
  groupsRead: null, // resolves once the groups are read from the schema and their tiles built
};

// ---------------------------------------------------------------- rendering

function buildGroups() {
  const root = $("groups");
  for (const group of GROUPS) {
    const section = element("section", { class: "card group", "aria-labelledby": `title-${group.key}` });
    section.append(element("h2", { id: `title-${group.key}` }, group.title));
    const tiles = element("ul", { class: `tiles tiles-${group.key}` });
    for (const [field, label] of [...group.fields, ["total", "Total"]]) {
      const tile = element("li", { class: field === "total" ? "tile total" : "tile", id: `tile-${group.key}-${field}` });
      tile.append(
        element("span", { class: "tile-label" }, label),
        element("span", { class: "tile-value" }, "–"),
        element("span", { class: "tile-delta", "aria-hidden": "true" }),
      );
      tiles.append(tile);
    }
    const chart = element("figure", { class: "chart", id: `chart-${group.key}` });
    const bars = element("div", { class: "bars", role: "img", id: `bars-${group.key}` });
    for (const [field, label] of group.fields) {
      const row = element("div", { class: "bar-row", "aria-hidden": "true" });
      const track = element("span", { class: "bar-track" });
      track.append(element("span", { class: `bar bar-${group.key}`, id: `bar-${group.key}-${field}` }));
      row.append(element("span", { class: "bar-label" }, label), track, element("span", { class: "bar-value", id: `bar-value-${group.key}-${field}` }, "0"));
      bars.append(row);
    }
    chart.append(bars, element("figcaption", {}, `${group.title}: share of each count`));
    const body = element("div", { class: "group-body" });
    body.append(tiles, chart);
    section.append(body);
    root.append(section);
  }
}

function element(tag, attributes = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function render(stats) {
  const previous = state.shown;
  if (previous && stats.version <= previous.version) return; // never go back, nor repeat
  state.shown = stats;
  const changes = [];
  for (const group of GROUPS) {
    const counts = stats[group.key];
    const max = Math.max(1, ...group.fields.map(([field]) => counts[field]));
    for (const [field, label] of [...group.fields, ["total", "Total"]]) {
      const value = counts[field];
      const tile = $(`tile-${group.key}-${field}`);
      tile.querySelector(".tile-value").textContent = value.toLocaleString();
      const before = previous?.[group.key][field];
      if (before !== undefined && before !== value) {
        const delta = value - before;
        highlight(tile, `${delta > 0 ? "+" : "−"}${Math.abs(delta).toLocaleString()}`);
        if (field !== "total") changes.push(`${group.title} ${label} ${before} to ${value}`);
      }
    }
    for (const [field] of group.fields) {
      $(`bar-${group.key}-${field}`).style.width = `${(100 * counts[field]) / max}%`;
      $(`bar-value-${group.key}-${field}`).textContent = counts[field].toLocaleString();
    }
    const summary = group.fields.map(([field, label]) => `${label} ${counts[field]}`).join(", ");
    $(`bars-${group.key}`).setAttribute("aria-label", `${group.title}: ${summary}; total ${counts.total}`);
  }
  renderMoney(stats.money, previous?.money);
  $("version").textContent = String(stats.version);
  $("last-change").replaceChildren(stats.version > 0 ? timeElement(stats.updatedAt) : "no change yet");
  if (changes.length) $("changes").textContent = `Changed: ${changes.join("; ")}.`;
  $("groups").hidden = false;
}

// ---------------------------------------------------------------- receivables

const money = (text) => Number(text).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });

/** The money tiles from the event; the aging, customers and revenue (two more reads) whenever a money value moved. */
function renderMoney(totals, before) {
  for (const field of ["invoiced", "collected", "outstanding"]) {
    const tile = $(`tile-money-${field}`);
    tile.querySelector(".tile-value").textContent = money(totals[field]);
    if (before && before[field] !== totals[field]) {
      const delta = Number(totals[field]) - Number(before[field]);
      highlight(tile, `${delta > 0 ? "+" : "−"}${money(Math.abs(delta).toFixed(2))}`);
    }
  }
  $("receivables").hidden = false;
  if (!before || ["invoiced", "collected"].some((field) => before[field] !== totals[field])) refreshMoneyPanel();
}

function lastTwelveMonths() {
  const now = new Date();
  const month = (offset) => {
    const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - offset, 1));
    return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, "0")}`;
  };
  return { from: month(11), to: month(0) };
}

async function refreshMoneyPanel() {
  const session = state.session;
  if (!session) return;
  const asked = (state.moneyAsked = (state.moneyAsked ?? 0) + 1);
  try {
    const data = await graphql(MONEY_PANEL, { orgId: session.orgId, ...lastTwelveMonths() });
    if (asked !== state.moneyAsked || state.session !== session) return; // a newer refresh is on its way
    renderAging(data.receivablesAging);
    renderRevenue(data.revenueByMonth);
    $("receivables").dataset.refreshed = String(asked);
  } catch (error) {
    $("aging-as-of").textContent = `not read (${error.message})`;
  }
}

function renderAging(aging) {
  const total = Number(aging.buckets.total);
  $("aging").replaceChildren(
    ...AGES.map(([field], k) => {
      const part = element("span", { class: `age-${k}`, title: `${AGES[k][1]}: ${money(aging.buckets[field])}` });
      part.style.flexGrow = String(total ? Number(aging.buckets[field]) : 0);
      return part;
    }),
  );
  const described = AGES.map(([field, label]) => `${label} ${money(aging.buckets[field])}`).join(", ");
  $("aging").setAttribute("aria-label", `Outstanding by age: ${described}; total ${money(aging.buckets.total)}`);
  $("aging-as-of").textContent = `as of ${aging.asOf}`;
  $("aging-legend").replaceChildren(
    ...AGES.map(([field, label], k) => {
      const item = element("li", { id: `age-${field}` });
      item.append(element("i", { class: `age-${k}`, "aria-hidden": "true" }), `${label}: ${money(aging.buckets[field])}`);
      return item;
    }),
  );
  const rows = aging.customers.map((c) => {
    const row = element("tr");
    row.append(
      element("td", {}, c.customer?.name ?? "(no customer)"),
      element("td", {}, String(c.invoices)),
      element("td", {}, money(c.buckets.total)),
    );
    return row;
  });
  if (!rows.length) {
    const row = element("tr");
    row.append(element("td", { colspan: "3" }, "Nothing is owed."));
    rows.push(row);
  }
  $("customers").replaceChildren(...rows);
}

function renderRevenue(months) {
  const max = Math.max(0.01, ...months.map((m) => Number(m.invoiced)));
  $("revenue").replaceChildren(
    ...months.map((m) => {
      const row = element("div", { class: "bar-row", "aria-hidden": "true" });
      const track = element("span", { class: "bar-track" });
      const bar = element("span", { class: "bar bar-money", id: `revenue-${m.month}` });
      bar.style.width = `${(100 * Number(m.invoiced)) / max}%`;
      track.append(bar);
      row.append(element("span", { class: "bar-label" }, m.month), track, element("span", { class: "bar-value" }, money(m.invoiced)));
      return row;
    }),
  );
  const described = months.filter((m) => Number(m.invoiced)).map((m) => `${m.month} ${money(m.invoiced)}`);
  $("revenue").setAttribute("aria-label", `Invoiced per month: ${described.join(", ") || "nothing in the last 12 months"}`);
}

function highlight(tile, deltaText) {
  tile.querySelector(".tile-delta").textContent = deltaText;
  tile.classList.remove("changed");
  void tile.offsetWidth; // restart the animation
  tile.classList.add("changed");
  clearTimeout(tile.highlightTimer);
  tile.highlightTimer = setTimeout(() => {
    tile.classList.remove("changed");
    tile.querySelector(".tile-delta").textContent = "";
  }, HIGHLIGHT_MS);
}

function timeElement(iso) {
  const when = new Date(iso);
  const node = element("time", { datetime: iso }, when.toLocaleTimeString());
  node.title = when.toLocaleString();
  return node;
}

/** The state goes to a live region; the detail (a countdown) does not, so it is not read out every second. */
function setConnection(kind, text, detail = "") {
  $("connection").dataset.state = kind;
  if ($("connection-text").textContent !== text) $("connection-text").textContent = text;
  $("connection-detail").textContent = detail;
  $("reconnect").hidden = !(kind === "offline" || kind === "refused");
}

// ---------------------------------------------------------------- live connection

function wsUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/graphql`;
}

function connect() {
  clearTimeout(state.retryTimer);
  clearInterval(state.countdown);
  drop(1000, "replaced");
  const session = state.session;
  if (!session || state.stopped || !GROUPS.length) return;
  if (auth.isExpired(session)) return signOut("Your token has expired: sign in again.");
  if (state.attempt) setConnection("offline", "Offline: reconnecting", `now (attempt ${state.attempt})`);
  else setConnection("connecting", "Connecting…");
  const connection = new GraphQLWsConnection(wsUrl(), {
    payload: { Authorization: `Bearer ${session.token}` },
    onAck: () => {
      setConnection("live", "Live");
      // Back to quick retries only once this connection proved stable (an event, or 5 s without a close).
      clearTimeout(state.stableTimer);
      state.stableTimer = setTimeout(() => (state.attempt = 0), 5000);
    },
    onClose: ({ code }) => {
      if (state.connection !== connection || state.stopped) return;
      clearTimeout(state.stableTimer);
      state.connection = null;
      if (code === 4403) {
        // Strawberry closes with 4403 when connection_init is refused or the token expires.
        if (auth.isExpired(session)) return signOut("Your token has expired: sign in again.");
        return refused("The server refused this token (invalid, or too many open connections).");
      }
      scheduleReconnect();
    },
  });
  state.connection = connection;
  connection.subscribe(statsChanged(), { orgId: session.orgId, sinceVersion: state.shown?.version ?? null }, {
    next: (result) => {
      if (result.errors?.length) return subscriptionFailed(result.errors);
      state.attempt = 0;
      render(result.data.organizationStatsChanged);
    },
    error: (errors) => subscriptionFailed(errors),
    complete: () => connection.terminate(1000, "completed"),
  });
}

function subscriptionFailed(errors) {
  const error = errors?.[0] ?? {};
  const code = error.extensions?.code;
  if (FATAL_CODES.has(code)) return refused(`${code}: ${error.message ?? "the subscription was refused"}`);
  state.connection?.terminate(1000, "subscription error"); // its onClose schedules the reconnection
}

function refused(message) {
  drop(1000, "refused");
  setConnection("refused", message);
}

/** Close the connection without reconnecting (its onClose ignores a connection no longer current). */
function drop(code, reason) {
  clearTimeout(state.stableTimer);
  const connection = state.connection;
  state.connection = null;
  connection?.terminate(code, reason);
}

function scheduleReconnect() {
  clearTimeout(state.retryTimer);
  clearInterval(state.countdown);
  if (!navigator.onLine) {
    setConnection("offline", "Offline: this browser has no network. Reconnecting when it is back.");
    return;
  }
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt);
  const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  state.attempt += 1;
  state.retryAt = Date.now() + delay;
  const tell = () => {
    const seconds = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
    setConnection("offline", "Offline: reconnecting", `in ${seconds} s (attempt ${state.attempt})`);
  };
  tell();
  state.countdown = setInterval(tell, 1000);
  state.retryTimer = setTimeout(connect, delay);
}

function reconnectNow() {
  state.attempt = 0;
  state.stopped = false;
  connect();
}

// ---------------------------------------------------------------- the groups, from the schema

/** Reads the count groups and builds their tiles, retrying with backoff until the server answers. */
async function readGroups() {
  for (let attempt = 0; ; attempt += 1) {
    try {
      const { __type } = await graphql(COUNT_TYPES, {}, null);
      GROUPS.push(...groupsOf(__type));
      buildGroups();
      $("connection-detail").textContent = "";
      return;
    } catch (error) {
      $("connection-detail").textContent = `could not read the schema (${error.message}), retrying`;
      await new Promise((resolve) => setTimeout(resolve, Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt)));
    }
  }
}

// ---------------------------------------------------------------- admin panel

async function graphql(query, variables, bearer = state.session?.token) {
  const response = await fetch("/graphql", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...(bearer && { Authorization: `Bearer ${bearer}` }) },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json().catch(() => ({ errors: [{ message: `HTTP ${response.status}` }] }));
  if (body.errors?.length) {
    const error = new Error(body.errors[0].message);
    error.code = body.errors[0].extensions?.code;
    throw error;
  }
  return body.data;
}

function setDrift(kind, badge, text) {
  $("drift").dataset.state = kind;
  $("drift-badge").textContent = badge;
  $("drift-text").textContent = text;
}

function adminFailed(error) {
  if (error.code === "FORBIDDEN") {
    $("admin").hidden = true; // the token's role is not an admin's after all
    return;
  }
  setDrift("error", "Unknown", `Could not check: ${error.message}`);
}

async function checkDrift() {
  if (!state.session || $("admin").hidden) return;
  $("check-drift").disabled = true;
  try {
    const { driftReport } = await graphql(DRIFT_REPORT, { orgId: state.session.orgId });
    const list = $("drift-list");
    list.replaceChildren(
      ...driftReport.drift.map((d) => element("li", {}, `${d.counter}: stored ${d.stored}, recount ${d.actual}`)),
    );
    const checked = new Date(driftReport.checkedAt).toLocaleTimeString();
    if (driftReport.ok) setDrift("ok", "No drift", `Every counter matches a recount (checked ${checked}).`);
    else {
      const n = driftReport.drift.length;
      setDrift("drift", "Drift", `${n} counter${n === 1 ? "" : "s"} differ from a recount (checked ${checked}).`);
    }
  } catch (error) {
    adminFailed(error);
  } finally {
    $("check-drift").disabled = false;
  }
}

async function recalculate() {
  const button = $("recalculate");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  setDrift($("drift").dataset.state, "Working", "Recalculating from the source rows…");
  try {
    const { recalculateOrgStats } = await graphql(RECALCULATE, { orgId: state.session.orgId });
    const n = recalculateOrgStats.corrected.length;
    await checkDrift();
    $("drift-text").textContent += ` Recalculated: ${n} counter${n === 1 ? "" : "s"} corrected.`;
  } catch (error) {
    adminFailed(error);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

// ---------------------------------------------------------------- sign-in

function showSignIn(message = "") {
  $("sign-in").hidden = false;
  $("groups").hidden = true;
  $("receivables").hidden = true;
  $("admin").hidden = true;
  $("org-line").hidden = true;
  $("sign-out").hidden = true;
  $("meta").hidden = true;
  $("version").textContent = "–";
  $("last-change").textContent = "–";
  const error = $("sign-in-error");
  error.textContent = message;
  error.hidden = !message;
  setConnection("signed-out", "Signed out");
}

function start(session) {
  state.session = session;
  state.shown = null;
  state.attempt = 0;
  state.stopped = false;
  $("sign-in").hidden = true;
  $("sign-in-error").hidden = true;
  $("org-name").textContent = session.orgId;
  $("role-name").textContent = session.role;
  $("org-line").hidden = false;
  $("sign-out").hidden = false;
  $("meta").hidden = false;
  for (const tile of document.querySelectorAll(".tile-value")) tile.textContent = "–";
  const admin = auth.isAdmin(session);
  $("admin").hidden = !admin;
  clearInterval(state.driftTimer);
  if (admin) {
    setDrift("unknown", "Not checked", "Checking…");
    $("drift-list").replaceChildren();
    checkDrift();
    state.driftTimer = setInterval(checkDrift, DRIFT_EVERY_MS);
  }
  setConnection("connecting", "Connecting…");
  state.groupsRead.then(() => state.session === session && connect());
}

function signIn(session) {
  auth.save(session);
  start(session);
  $("main").focus();
}

function signOut(message = "") {
  state.stopped = true;
  clearTimeout(state.retryTimer);
  clearInterval(state.countdown);
  clearInterval(state.driftTimer);
  drop(1000, "signed out");
  state.session = null;
  state.shown = null;
  auth.forget();
  showSignIn(message);
  $("token-input").focus();
}

async function devSignIn(event) {
  event.preventDefault();
  const button = $("dev-sign-in");
  button.disabled = true;
  try {
    const response = await fetch("/dev-login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ orgId: $("dev-org").value.trim() }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || !body.token) throw new Error(body.error ?? `HTTP ${response.status}`);
    signIn(auth.makeSession(body.token));
  } catch (error) {
    showSignIn(`Development sign-in failed: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

function tokenSignIn(event) {
  event.preventDefault();
  const input = $("token-input");
  try {
    const session = auth.makeSession(input.value, $("token-org").value);
    input.value = "";
    signIn(session);
  } catch (error) {
    showSignIn(error.message);
    input.focus();
  }
}

// ---------------------------------------------------------------- start-up

function main() {
  state.groupsRead = readGroups();
  $("dev-form").hidden = document.querySelector('meta[name="tally-dev-login"]') === null;
  $("token-form").addEventListener("submit", tokenSignIn);
  $("dev-form").addEventListener("submit", devSignIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("reconnect").addEventListener("click", reconnectNow);
  $("check-drift").addEventListener("click", checkDrift);
  $("recalculate").addEventListener("click", recalculate);
  window.addEventListener("online", () => state.session && !state.connection && reconnectNow());
  window.addEventListener("offline", () => state.connection?.terminate(4000, "browser offline"));
  const session = auth.restore();
  if (session) start(session);
  else showSignIn();
}

main();
