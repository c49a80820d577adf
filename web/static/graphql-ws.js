// A minimal client of the graphql-transport-ws protocol (the one Tally serves
// at /graphql): connection_init with a payload, subscribe by id, next / error /
// complete, ping / pong both ways. One instance is one WebSocket: reconnecting
// (with backoff and sinceVersion) is the caller's job, so it can change the
// variables of each new attempt.

export const PROTOCOL = "graphql-transport-ws";

export class GraphQLWsConnection {
  /**
   * @param {string} url ws:// or wss:// URL of the GraphQL endpoint
   * @param {object} options
   * @param {object} [options.payload] connection_init payload (e.g. {Authorization: "Bearer ..."})
   * @param {() => void} [options.onAck] the server accepted connection_init
   * @param {(info: {code: number, reason: string}) => void} [options.onClose] called once, however it ended
   * @param {number} [options.ackTimeoutMs] give up when no connection_ack comes in this time
   * @param {number} [options.pingIntervalMs] send a ping after this long without a message
   * @param {number} [options.pongTimeoutMs] then give up when nothing comes back in this time
   */
  constructor(url, options = {}) {
    this.options = { ackTimeoutMs: 10000, pingIntervalMs: 15000, pongTimeoutMs: 10000, ...options };
    this.sinks = new Map();
    this.nextId = 1;
    this.acked = false;
    this.closed = false;
    this.timers = {};
    this.socket = new WebSocket(url, PROTOCOL);
    this.socket.onopen = () => {
      this.send({ type: "connection_init", payload: this.options.payload ?? {} });
      this.timers.ack = setTimeout(() => this.terminate(4408, "connection_ack timeout"), this.options.ackTimeoutMs);
    };
    this.socket.onmessage = (event) => this.receive(event.data);
    this.socket.onclose = (event) => this.finish(event.code, event.reason);
    this.socket.onerror = () => {}; // a close event follows with the details
  }

  /** Subscribe; returns a function that unsubscribes. Sent once the connection is acknowledged. */
  subscribe(query, variables, sink) {
    const id = String(this.nextId++);
    this.sinks.set(id, { sink, message: { id, type: "subscribe", payload: { query, variables } } });
    if (this.acked) this.send(this.sinks.get(id).message);
    return () => {
      if (this.sinks.delete(id) && this.acked) this.send({ id, type: "complete" });
    };
  }

  /** Close now; onClose runs at once, without waiting for a dead peer's close handshake. */
  terminate(code = 1000, reason = "") {
    if (this.closed) return;
    try {
      this.socket.close(code, reason);
    } catch {
      this.socket.close();
    }
    this.finish(code, reason);
  }

  send(message) {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return this.terminate(4400, "invalid message");
    }
    this.alive();
    const entry = message.id !== undefined ? this.sinks.get(message.id) : undefined;
    switch (message.type) {
      case "connection_ack":
        this.acked = true;
        clearTimeout(this.timers.ack);
        for (const { message: subscribe } of this.sinks.values()) this.send(subscribe);
        this.options.onAck?.();
        break;
      case "ping":
        this.send({ type: "pong" });
        break;
      case "pong":
        break;
      case "next":
        entry?.sink.next?.(message.payload);
        break;
      case "error":
        this.sinks.delete(message.id);
        entry?.sink.error?.(message.payload);
        break;
      case "complete":
        this.sinks.delete(message.id);
        entry?.sink.complete?.();
        break;
      default:
        this.terminate(4400, `unexpected message type ${message.type}`);
    }
  }

  /** Any message proves the server is there: re-arm the ping, cancel the pong deadline. */
  alive() {
    clearTimeout(this.timers.ping);
    clearTimeout(this.timers.pong);
    if (this.closed) return;
    this.timers.ping = setTimeout(() => {
      this.send({ type: "ping" });
      this.timers.pong = setTimeout(() => this.terminate(4499, "no pong"), this.options.pongTimeoutMs);
    }, this.options.pingIntervalMs);
  }

  finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    this.socket.onopen = this.socket.onmessage = this.socket.onclose = null;
    this.options.onClose?.({ code, reason });
  }
}
