// Every audit of graphql-http's serverAudits against the URL given, with a bearer token
// from TALLY_TOKEN. Prints one JSON object: the total, how many passed, and each one that
// did not (warnings included). Exits 1 when any did not pass.
import { serverAudits } from 'graphql-http';

const [url] = process.argv.slice(2);
const token = process.env.TALLY_TOKEN;
const fetchFn = (input, init = {}) => {
  const headers = new Headers(init.headers || {});
  headers.set('authorization', `Bearer ${token}`);
  return fetch(input, { ...init, headers });
};

const failed = [];
let total = 0;
for (const audit of serverAudits({ url, fetchFn })) {
  total += 1;
  const result = await audit.fn();
  if (result.status !== 'ok') failed.push({ id: audit.id, name: audit.name, status: result.status, reason: result.reason });
}
console.log(JSON.stringify({ total, passed: total - failed.length, failed }));
process.exit(failed.length ? 1 : 0);
