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
 *
 * Recovery (docs/recovery.md): the client remembers the [epoch, seq] of the last
 * event it received per room (events carrying room/seq/epoch) and for its user stream
 * (user/seq/epoch), and reconnects with them in the `recover` query parameter, so the
 * engine replays what was missed, then sends a `linkd.recovered` verdict per stream.
 * Verdicts reach listeners like any event and `onRecovered(fn)`:
 * fn({kind: "room" | "user", name}, recovered, data). recovered false: events may be
 * missing, fetch that stream's history. A duplicate (seq at or before the position,
 * same epoch) is dropped and counted in `stats.duplicates`. Requests are never resent.
 *
 * Token refresh (docs/clients.md): `token` (a string, or a function, sync or async,
 * called before every attempt) goes in the `token` query parameter (a token already in
 * `url` is read from there). With `refreshToken: async () => newToken`, the client
 * asks for a new token `refreshBefore` ms before the current one's `exp` (read from
 * the JWT, not verified; halfway for a shorter-lived token) and sends it as
 * `linkd.refresh` on the open connection: no reconnection, rooms and positions stay.
 * A refused refresh is retried until the token expires; `refresh(token?)` does one by
 * hand. A reconnection presents the newest token.
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
    recover: true, // send positions on reconnection (the `recover` query parameter)
    refreshBefore: 30000, // ms before the token's exp to ask refreshToken for a new one
  };
  //: Seqs remembered past a gap per stream, waiting for a recovery to fill it.
  const MAX_AHEAD = 1024;

  // The last event received on one stream; it advances only to the next seq or to a
  // new epoch. Past a gap it stays put (the next recovery asks for the gap) and
  // remembers what it saw, to drop it when it is replayed.
  function see(cursor, epoch, seq) {
    if (epoch !== cursor.epoch) {
      Object.assign(cursor, { epoch, seq, ahead: new Set() });
      return "next";
    }
    if (seq <= cursor.seq || cursor.ahead.has(seq)) return "duplicate";
    if (seq !== cursor.seq + 1) {
      const newHole = !cursor.ahead.has(seq - 1);
      cursor.ahead.add(seq);
      if (cursor.ahead.size > MAX_AHEAD) {
        Object.assign(cursor, { seq: Math.max(...cursor.ahead), ahead: new Set() });
      }
      return newHole ? "gap" : "ahead";
    }
    cursor.seq = seq;
    while (cursor.ahead.delete(cursor.seq + 1)) cursor.seq += 1;
    return "next";
  }

  function base64url(text) {
    const bytes = new TextEncoder().encode(text);
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // The token's exp in ms since the epoch (read, not verified), or null.
  function tokenExpiry(token) {
    const parts = typeof token === "string" ? token.split(".") : [];
    if (parts.length !== 3) return null;
    try {
      const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      const json = decodeURIComponent(
        Array.from(atob(b64), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
      );
      const exp = JSON.parse(json).exp;
      return Number.isFinite(exp) ? exp * 1000 : null;
    } catch (err) {
      return null;
    }
  }

  class LinkdClient {
    constructor(options) {
      if (!options || !options.url) throw new TypeError("LinkdClient needs {url}");
      this.options = Object.assign({}, DEFAULTS, options);
      this.state = "idle";
      this.ws = null;
      this.attempt = 0;
      this.nextId = 1;
      // Ids unique to this client (not only its connection): the engine answers a
      // repeated id of the same user from memory, and two tabs counting from 1 would collide.
      this.idPrefix = `r${Math.random().toString(36).slice(2, 10)}.`;
      this.pending = new Map(); // id -> {resolve, reject, timer}
      this.listeners = new Map(); // event type (or "*") -> Set of functions
      this.stateListeners = new Set();
      this.binaryListeners = new Set(); // fn(ArrayBuffer) per binary frame
      if (this.options.onState) this.stateListeners.add(this.options.onState);
      this.recoveredListeners = new Set();
      if (this.options.onRecovered) this.recoveredListeners.add(this.options.onRecovered);
      this.rooms = new Map(); // room -> {epoch, seq, ahead}
      this.user = null; // {name, epoch, seq, ahead}
      this.recovering = null; // the positions sent with the current connection
      this.everOpened = false;
      this.stats = { events: 0, duplicates: 0, gaps: 0, reconnects: 0, recovered: 0, notRecovered: 0 };
      this.stopped = false;
      this.opening = false;
      this.retryTimer = null;
      this.token = null; // the token of the current connection
      this.refreshed = null; // the newest token a refresh installed
      this.refreshTimer = null;
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
      clearTimeout(this.refreshTimer);
      this._failPending("CLOSED", "the client was closed");
      this._setState("closed");
    }

    /** Listen for events of `type` ("*" for all): fn(data, frame). Returns an unsubscriber. */
    on(type, fn) {
      if (!this.listeners.has(type)) this.listeners.set(type, new Set());
      this.listeners.get(type).add(fn);
      return () => this.listeners.get(type).delete(fn);
    }

    /** Listen for binary frames (a service's emit of bytes): fn(ArrayBuffer). */
    onBinary(fn) {
      this.binaryListeners.add(fn);
      return () => this.binaryListeners.delete(fn);
    }

    /** Send one binary frame (ArrayBuffer or typed array; no ack); false when not connected. */
    sendBinary(data) {
      if (!this.connected) return false;
      this.ws.send(data);
      return true;
    }

    /** Listen for state changes: fn(state, detail). Returns an unsubscriber. */
    onState(fn) {
      this.stateListeners.add(fn);
      return () => this.stateListeners.delete(fn);
    }

    /** Listen for recovery verdicts: fn(stream, recovered, data). Returns an unsubscriber. */
    onRecovered(fn) {
      this.recoveredListeners.add(fn);
      return () => this.recoveredListeners.delete(fn);
    }

    /** {rooms: {room: [epoch, seq]}, user?: [epoch, seq]}: what a reconnection asks for. */
    positions() {
      const rooms = {};
      for (const [room, c] of this.rooms) rooms[room] = [c.epoch, c.seq];
      const body = { rooms };
      if (this.user) body.user = [this.user.epoch, this.user.seq];
      return body;
    }

    /** Drop a room's position (after leaving it: there is nothing to recover there). */
    forget(room) {
      this.rooms.delete(room);
    }

    get connected() {
      return this.state === "open";
    }

    /**
     * Send `type` with `data` and resolve with the ack's data (reject with a LinkdError).
     * `id` (default: a new one): the same id again after DISCONNECTED is a retry, answered
     * from memory by the engine if the first was handled (docs/clients.md).
     */
    request(type, data, timeout, id) {
      return new Promise((resolve, reject) => {
        if (!this.connected) {
          reject(new LinkdError("DISCONNECTED", "not connected"));
          return;
        }
        if (id === undefined || id === null) id = `${this.idPrefix}${this.nextId++}`;
        else if (this.pending.has(id)) {
          reject(new LinkdError("BAD_REQUEST", `a request with id ${id} is already waiting`));
          return;
        }
        const ms = timeout || this.options.requestTimeout;
        const timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new LinkdError("TIMEOUT", `no answer to ${type} within ${ms} ms`));
        }, ms);
        this.pending.set(id, { resolve, reject, timer });
        this.ws.send(JSON.stringify({ type, data, id }));
      });
    }

    /**
     * Replace the connection's token (`linkd.refresh`): `token`, or one from the
     * refreshToken option. Resolves with the new expiry (ms since the epoch, or null);
     * rejects with a LinkdError (UNAUTHORIZED, FORBIDDEN: another user, RATE_LIMITED),
     * and the connection keeps its old token.
     */
    async refresh(token) {
      if (token === undefined) {
        if (!this.options.refreshToken) throw new TypeError("no token and no refreshToken option");
        token = await this.options.refreshToken();
      }
      const data = await this.request("linkd.refresh", { token });
      this.token = token;
      this.refreshed = token;
      this._scheduleRefresh();
      return data && Number.isFinite(data.expiresAt) ? data.expiresAt * 1000 : null;
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
      try {
        url = await this._withToken(url);
      } catch (err) {
        if (!this.stopped) this._scheduleRetry(null, err);
        return;
      }
      if (this.stopped) return;
      const positions = this.positions();
      const asks = this.options.recover && (this.user || this.rooms.size > 0);
      this.recovering = asks ? positions : null;
      if (asks) {
        const u = new URL(url, typeof location !== "undefined" ? location.href : undefined);
        u.searchParams.set("recover", base64url(JSON.stringify(positions)));
        url = u.toString();
      }
      const reconnection = this.everOpened;
      const ws = new WebSocket(url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => {
        if (ws !== this.ws) return;
        this.attempt = 0;
        this.everOpened = true;
        if (reconnection) this.stats.reconnects += 1;
        this._setState("open");
        this._scheduleRefresh();
      };
      ws.onmessage = (msg) => {
        if (ws !== this.ws) return;
        if (typeof msg.data === "string") this._receive(msg.data);
        else this._binary(msg.data);
      };
      ws.onclose = (ev) => {
        if (ws !== this.ws) return;
        this.ws = null;
        clearTimeout(this.refreshTimer);
        this._failPending("DISCONNECTED", "the connection closed");
        if (!this.stopped) this._scheduleRetry(ev.code);
      };
      // An error is always followed by a close event, which does the work.
      ws.onerror = () => {};
    }

    // The URL with the token to present: the newest refreshed one, else the option's,
    // else the one in the URL; remembers it as this.token.
    async _withToken(url) {
      const o = this.options;
      const u = new URL(url, typeof location !== "undefined" ? location.href : undefined);
      let token = u.searchParams.get("token");
      if (typeof o.token === "function") token = await o.token();
      else if (this.refreshed) token = this.refreshed;
      else if (o.token) token = o.token;
      this.token = token || null;
      if (token && token !== u.searchParams.get("token")) {
        u.searchParams.set("token", token);
        return u.toString();
      }
      return url;
    }

    // Ask refreshToken for a new token ahead of the current one's exp.
    _scheduleRefresh(retry) {
      clearTimeout(this.refreshTimer);
      this.refreshTimer = null;
      const exp = tokenExpiry(this.token);
      if (!this.options.refreshToken || exp === null || !this.connected) return;
      const left = exp - Date.now();
      if (left <= 0) return;
      const wait = retry
        ? Math.max(1000, Math.min(5000, left / 4))
        : Math.max(0, left - Math.min(this.options.refreshBefore, left / 2));
      this.refreshTimer = setTimeout(() => {
        this.refreshTimer = null;
        this.refresh().catch((err) => {
          if (err && err.code === "DISCONNECTED") return;
          console.warn("linkd token refresh failed, retrying", err);
          this._scheduleRefresh(true);
        });
      }, wait);
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
      if (!this._track(frame)) return;
      if (frame.type === "linkd.recovered") this._verdict(frame.data);
      this.stats.events += 1;
      this._emit(frame.type, frame.data, frame);
      this._emit("*", frame.data, frame);
    }

    // Advance the position of the frame's stream; false for a duplicate.
    _track(frame) {
      const { seq, epoch, room, user } = frame;
      if (!Number.isInteger(seq) || typeof epoch !== "string") return true;
      let cursor;
      if (typeof room === "string") {
        cursor = this.rooms.get(room);
        if (!cursor) {
          this.rooms.set(room, { epoch, seq, ahead: new Set() });
          return true;
        }
      } else if (typeof user === "string") {
        if (!this.user || this.user.name !== user) {
          this.user = { name: user, epoch, seq, ahead: new Set() };
          return true;
        }
        cursor = this.user;
      } else {
        return true;
      }
      const seen = see(cursor, epoch, seq);
      if (seen === "gap") this.stats.gaps += 1;
      if (seen === "duplicate") this.stats.duplicates += 1;
      return seen !== "duplicate";
    }

    // A verdict: the stream is now at its current position [epoch, seq].
    _verdict(data) {
      if (!data || typeof data !== "object") return;
      const at = { epoch: data.epoch, seq: data.seq, ahead: new Set() };
      const known = typeof data.epoch === "string" && Number.isInteger(data.seq);
      let stream;
      if (typeof data.room === "string") {
        if (known) this.rooms.set(data.room, at);
        stream = { kind: "room", name: data.room };
      } else if (typeof data.user === "string") {
        if (known) this.user = Object.assign({ name: data.user }, at);
        stream = { kind: "user", name: data.user };
      } else {
        return;
      }
      const recovered = data.recovered === true;
      if (recovered) this.stats.recovered += 1;
      else this.stats.notRecovered += 1;
      for (const fn of Array.from(this.recoveredListeners)) {
        try {
          fn(stream, recovered, data);
        } catch (err) {
          console.error("linkd recovery listener failed", err);
        }
      }
    }

    _binary(data) {
      for (const fn of Array.from(this.binaryListeners)) {
        try {
          fn(data);
        } catch (err) {
          console.error("linkd binary listener failed", err);
        }
      }
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
    module.exports = { LinkdClient, LinkdError, tokenExpiry };
  }
})(typeof window !== "undefined" ? window : globalThis);
