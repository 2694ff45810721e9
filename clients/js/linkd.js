/*
 * linkd.js: a small, dependency-free browser client for Linkd WebSocket services.
 *
 * Speaks the client envelope of docs/architecture.md: it sends
 * {"type", "data", "id"} frames, resolves each request with the ack that carries
 * its id, and hands every other frame ({"type", "data"}, an event) to listeners.
 *
 *   const client = new LinkdClient({
 *     url: () => `${location.origin.replace(/^http/, "ws")}/ws/chat?token=${token}`,
 *     onState: (state, detail) => console.log(state, detail),
 *   });
 *   client.on("chat.message", (data) => show(data));
 *   client.connect();
 *   const ack = await client.request("chat.join", { room });  // the ack's data
 *   // a failed request rejects with a LinkdError: err.code, err.message, err.details
 *
 * Reconnection: after an unexpected close the client reconnects by itself, waiting
 * initialDelay doubling up to maxDelay, each delay spread by +-jitter (so a restarted
 * server is not hit by every client at once); a connection that opens resets it.
 * `url` may be a function (sync or async): it is called before every attempt, so a
 * page can fetch a fresh token there. States: "connecting", "open",
 * "reconnecting" (detail: {delay, attempt, code}), "closed" (after close()).
 */
(function (root) {
  "use strict";

  class LinkdError extends Error {
    constructor(code, message, details) {
      super(message || code);
      this.name = "LinkdError";
      this.code = code;
      this.details = details;
    }
  }

  const DEFAULTS = {
    initialDelay: 500, // ms before the first reconnection attempt
    maxDelay: 15000, // ms, the ceiling of the doubling
    jitter: 0.3, // each delay is multiplied by a random factor in [1 - j, 1 + j]
    requestTimeout: 10000, // ms before a request without an ack rejects with TIMEOUT
  };

  class LinkdClient {
    constructor(options) {
      if (!options || !options.url) throw new TypeError("LinkdClient needs {url}");
      this.options = Object.assign({}, DEFAULTS, options);
      this.state = "idle";
      this.ws = null;
      this.attempt = 0;
      this.nextId = 1;
      this.pending = new Map(); // id -> {resolve, reject, timer}
      this.listeners = new Map(); // event type (or "*") -> Set of functions
      this.stateListeners = new Set();
      if (this.options.onState) this.stateListeners.add(this.options.onState);
      this.stopped = false;
      this.opening = false;
      this.retryTimer = null;
    }

    /** Open the connection (and keep it open until close()). */
    connect() {
      this.stopped = false;
      if (this.ws || this.retryTimer || this.opening) return;
      this._open();
    }

    /** Close for good: no reconnection; pending requests reject with CLOSED. */
    close(code, reason) {
      this.stopped = true;
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      if (this.ws) this.ws.close(code || 1000, reason || "");
      this.ws = null;
      this._failPending("CLOSED", "the client was closed");
      this._setState("closed");
    }

    /** Listen for events of `type` ("*" for all): fn(data, frame). Returns an unsubscriber. */
    on(type, fn) {
      if (!this.listeners.has(type)) this.listeners.set(type, new Set());
      this.listeners.get(type).add(fn);
      return () => this.listeners.get(type).delete(fn);
    }

    /** Listen for state changes: fn(state, detail). Returns an unsubscriber. */
    onState(fn) {
      this.stateListeners.add(fn);
      return () => this.stateListeners.delete(fn);
    }

    get connected() {
      return this.state === "open";
    }

    /** Send `type` with `data` and resolve with the ack's data (reject with a LinkdError). */
    request(type, data, timeout) {
      return new Promise((resolve, reject) => {
        if (!this.connected) {
          reject(new LinkdError("DISCONNECTED", "not connected"));
          return;
        }
        const id = `r${this.nextId++}`;
        const ms = timeout || this.options.requestTimeout;
        const timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new LinkdError("TIMEOUT", `no answer to ${type} within ${ms} ms`));
        }, ms);
        this.pending.set(id, { resolve, reject, timer });
        this.ws.send(JSON.stringify({ type, data, id }));
      });
    }

    /** Send without asking for an ack; returns false when not connected. */
    send(type, data) {
      if (!this.connected) return false;
      this.ws.send(JSON.stringify({ type, data }));
      return true;
    }

    // ------------------------------------------------------------------ internals
    async _open() {
      this._setState(this.attempt === 0 ? "connecting" : "reconnecting", {
        attempt: this.attempt,
      });
      let url;
      this.opening = true;
      try {
        url = typeof this.options.url === "function" ? await this.options.url() : this.options.url;
      } catch (err) {
        this.opening = false;
        if (!this.stopped) this._scheduleRetry(null, err);
        return;
      }
      this.opening = false;
      if (this.stopped) return;
      const ws = new WebSocket(url);
      this.ws = ws;
      ws.onopen = () => {
        if (ws !== this.ws) return;
        this.attempt = 0;
        this._setState("open");
      };
      ws.onmessage = (msg) => {
        if (ws === this.ws) this._receive(msg.data);
      };
      ws.onclose = (ev) => {
        if (ws !== this.ws) return;
        this.ws = null;
        this._failPending("DISCONNECTED", "the connection closed");
        if (!this.stopped) this._scheduleRetry(ev.code);
      };
      // An error is always followed by a close event, which does the work.
      ws.onerror = () => {};
    }

    _scheduleRetry(code, error) {
      const o = this.options;
      const base = Math.min(o.maxDelay, o.initialDelay * 2 ** this.attempt);
      const delay = Math.round(base * (1 - o.jitter + Math.random() * 2 * o.jitter));
      this.attempt += 1;
      this._setState("reconnecting", { delay, attempt: this.attempt, code, error });
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        if (!this.stopped) this._open();
      }, delay);
    }

    _receive(raw) {
      let frame;
      try {
        frame = JSON.parse(raw);
      } catch (err) {
        return; // not ours to understand
      }
      if (frame === null || typeof frame !== "object") return;
      if (frame.id !== undefined && frame.id !== null && this.pending.has(frame.id)) {
        const { resolve, reject, timer } = this.pending.get(frame.id);
        this.pending.delete(frame.id);
        clearTimeout(timer);
        if (frame.error) {
          reject(new LinkdError(frame.error.code, frame.error.message, frame.error.details));
        } else {
          resolve(frame.data);
        }
        return;
      }
      this._emit(frame.type, frame.data, frame);
      this._emit("*", frame.data, frame);
    }

    _emit(type, data, frame) {
      const fns = this.listeners.get(type);
      if (!fns) return;
      for (const fn of Array.from(fns)) {
        try {
          fn(data, frame);
        } catch (err) {
          console.error("linkd listener failed", err);
        }
      }
    }

    _failPending(code, message) {
      for (const { reject, timer } of this.pending.values()) {
        clearTimeout(timer);
        reject(new LinkdError(code, message));
      }
      this.pending.clear();
    }

    _setState(state, detail) {
      this.state = state;
      for (const fn of Array.from(this.stateListeners)) {
        try {
          fn(state, detail || {});
        } catch (err) {
          console.error("linkd state listener failed", err);
        }
      }
    }
  }

  root.LinkdClient = LinkdClient;
  root.LinkdError = LinkdError;
  if (typeof module !== "undefined" && module.exports) {
    module.exports = { LinkdClient, LinkdError };
  }
})(typeof window !== "undefined" ? window : globalThis);
