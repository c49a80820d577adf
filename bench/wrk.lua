-- wrk -t1 -c N -s bench/wrk.lua URL -- N BODIES EXPECTED
-- POSTs the lines of the file BODIES in turn, one sequence shared by the N connections. A response that is not HTTP 200, contains "errors" or
-- differs from the contents of the file EXPECTED (unless that is "") is an error. done() prints one JSON line:
-- sent (requests written, some unanswered at the end), requests, duration_us, errors, first_error and
-- latency_us, the latencies as [[µs, count], ...], wrk's coordinated-omission correction undone.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  connections, requests = tonumber(args[1]), {}
  for body in io.lines(args[2]) do
    table.insert(requests, wrk.format(nil, nil, nil, body))
  end
  if args[3] ~= "" then
    local file = io.open(args[3])
    expected = file:read("*a")
    file:close()
  end
  sent, errors, first_error = -1, 0, "" -- wrk calls request() once before the run, to check what it returns
end

function request()
  sent = sent + 1
  return requests[(sent - 1) % #requests + 1]
end

function response(status, headers, body)
  if status ~= 200 or body:find('"errors"', 1, true) or (expected and body ~= expected) then
    errors = errors + 1
    if first_error == "" then
      first_error = "HTTP " .. status .. ": " .. body:sub(1, 300)
    end
  end
end

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency)
  local sent, errors, first_error = 0, 0, ""
  for _, thread in ipairs(threads) do
    sent = sent + thread:get("sent")
    errors = errors + thread:get("errors")
    if first_error == "" then first_error = thread:get("first_error") end
  end
  local e = summary.errors
  errors = errors + e.connect + e.read + e.write + e.timeout -- statuses > 399: counted by response()
  -- wrk adds to a latency L > 2 x step a sample at L - step, L - 2 x step, ... (> step), with step =
  -- duration / (requests / connections): undone, so that the figures are those of the requests made.
  local counts, values = {}, {}
  for i = 1, #latency do
    local value, count = latency(i)
    counts[value] = count
    table.insert(values, value)
  end
  local per_connection = math.floor(summary.requests / threads[1]:get("connections"))
  local step = per_connection > 0 and math.floor(summary.duration / per_connection) or math.huge
  local pairs_out = {}
  for _, value in ipairs(values) do -- ascending: counts[value + step] is still wrk's
    local count = counts[value] - (value > step and counts[value + step] or 0)
    if count > 0 then table.insert(pairs_out, string.format("[%d,%d]", value, count)) end
  end
  io.write(string.format(
    '\n{"sent":%d,"requests":%d,"duration_us":%d,"errors":%d,"first_error":%s,"latency_us":[%s]}\n',
    sent, summary.requests, summary.duration, errors, json_string(first_error), table.concat(pairs_out, ",")
  ))
end
