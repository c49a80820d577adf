// The signed-in token: kept in sessionStorage (this tab, until it closes),
// never in the URL, never logged. Its payload is decoded here only to know the
// org and role; the server verifies the signature on every request.

const TOKEN_KEY = "tally.token";
const ORG_KEY = "tally.org";

/** The claims of a JWT, without verifying it; throws a readable Error. */
export function decodeClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error("That is not a JWT (expected three dot-separated parts).");
  let claims;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    claims = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new Error("The token's payload could not be read.");
  }
  if (!claims || typeof claims !== "object") throw new Error("The token's payload is not an object.");
  return claims;
}

/** A session from a token (and an org for service tokens, which carry none); throws a readable Error. */
export function makeSession(token, orgOverride = "") {
  token = token.trim().replace(/^bearer\s+/i, "");
  const claims = decodeClaims(token);
  const role = claims.role;
  if (!["member", "admin", "service"].includes(role)) throw new Error("The token carries no Tally role.");
  if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) throw new Error("The token has expired.");
  const orgId = role === "service" ? orgOverride.trim() : claims.org_id;
  if (typeof orgId !== "string" || !orgId) {
    throw new Error(role === "service" ? "A service token needs an organization: fill it in." : "The token carries no org_id.");
  }
  return { token, orgId, role, subject: String(claims.sub ?? ""), expiresAt: typeof claims.exp === "number" ? claims.exp * 1000 : Infinity };
}

export function isAdmin(session) {
  return session.role === "admin" || session.role === "service";
}

export function isExpired(session) {
  return session.expiresAt <= Date.now();
}

export function save(session) {
  sessionStorage.setItem(TOKEN_KEY, session.token);
  if (session.role === "service") sessionStorage.setItem(ORG_KEY, session.orgId);
  else sessionStorage.removeItem(ORG_KEY);
}

/** The stored session, if it is still usable. */
export function restore() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return null;
  try {
    return makeSession(token, sessionStorage.getItem(ORG_KEY) ?? "");
  } catch {
    forget();
    return null;
  }
}

export function forget() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(ORG_KEY);
}
