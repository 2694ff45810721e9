/*
 * The chat page: sign in (a demo user or a token), list your rooms, join one, read
 * its history (with "load older"), send, see others' messages and typing as they
 * arrive, and who is online. The connection (linkd.js) reconnects by itself and asks
 * the engine for the events it missed (docs/recovery.md); on each reconnection the page
 * rejoins the open room, and reloads its latest messages only when the engine could not
 * recover them (a `linkd.recovered` verdict with recovered false, or no position to
 * recover from).
 */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const SESSION_KEY = "linkd-chat-session";
  const ROOM_KEY = "linkd-chat-room"; // the open room, reopened after a reload
  const HISTORY_PAGE = 50;
  const TYPING_REFRESH_MS = 2000; // resend "typing" at most this often while typing
  const TYPING_IDLE_MS = 3000; // "stopped typing" after this long without a keystroke
  const TYPING_SHOWN_MS = 5000; // hide someone's indicator if they go quiet this long

  const state = {
    config: null,
    session: null, // {token, user: {id, username}, demo: bool}
    client: null,
    rooms: new Map(), // room id -> room (from GET /chat/rooms)
    unread: new Map(), // room id -> count
    current: null, // the open room's id
    oldest: null, // id of the oldest message shown (the history cursor)
    shown: new Set(), // ids of the messages shown
    members: new Map(), // user id -> {username, role} of the open room
    online: new Set(), // user ids online in the open room
    typing: new Map(), // user id -> {username, timer}
    typingSent: 0,
    typingIdle: null,
  };

  // ------------------------------------------------------------------ HTTP
  async function api(method, path, body) {
    const headers = { accept: "application/json" };
    if (state.session) headers.authorization = `Bearer ${state.session.token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await resp.json().catch(() => null);
    if (!resp.ok) {
      const err = (data && data.error) || {};
      const fields = err.details ? ` (${Object.entries(err.details).map(([k, v]) => `${k}: ${v}`).join(", ")})` : "";
      throw new Error(`${err.message || resp.statusText}${fields}`);
    }
    return data;
  }

  // ------------------------------------------------------------------ sign-in
  async function start() {
    try {
      state.config = await api("GET", "/chat/config");
    } catch (err) {
      $("login").hidden = false;
      $("login-error").textContent = `The chat service does not answer: ${err.message}`;
      return;
    }
    const saved = sessionStorage.getItem(SESSION_KEY);
    if (saved) {
      try {
        const { userId, token } = JSON.parse(saved);
        if (userId && state.config.demo) return signInDemo(userId);
        if (token) return signInToken(token);
      } catch (err) {
        sessionStorage.removeItem(SESSION_KEY);
      }
    }
    showLogin();
  }

  function showLogin() {
    $("app").hidden = true;
    $("login").hidden = false;
    $("logout").hidden = true;
    $("me").textContent = "";
    if (state.config.demo) {
      $("demo-login").hidden = false;
      const box = $("demo-users");
      box.replaceChildren();
      for (const user of state.config.users) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = user.username;
        button.dataset.userId = user.id;
        button.addEventListener("click", () => signInDemo(user.id));
        box.append(button);
      }
    }
    $("token-login").hidden = false;
  }

  async function demoToken(userId) {
    const { token, user } = await api("POST", "/chat/demo/token", { userId });
    return { token, user, demo: true };
  }

  async function signInDemo(userId) {
    try {
      state.session = await demoToken(userId);
    } catch (err) {
      $("login-error").textContent = err.message;
      return showLogin();
    }
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ userId }));
    await enter();
  }

  async function signInToken(token) {
    state.session = { token, user: null, demo: false };
    try {
      const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      state.session.user = { id: payload.sub, username: payload.preferred_username || payload.name || payload.sub };
    } catch (err) {
      $("login-error").textContent = "That does not look like a JWT.";
      state.session = null;
      return showLogin();
    }
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token }));
    await enter();
  }

  async function enter() {
    $("login").hidden = true;
    $("login-error").textContent = "";
    $("app").hidden = false;
    $("logout").hidden = false;
    $("me").textContent = state.session.user.username;
    await loadRooms();
    const saved = sessionStorage.getItem(ROOM_KEY);
    if (saved && state.rooms.has(saved)) state.current = saved; // opens once connected
    connect();
  }

  function signOut() {
    if (state.client) state.client.close();
    state.client = null;
    state.session = null;
    state.current = null;
    sessionStorage.removeItem(SESSION_KEY);
    sessionStorage.removeItem(ROOM_KEY);
    clearRoom();
    showLogin();
  }

  // ------------------------------------------------------------------ connection
  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${state.config.wsPath}?token=${encodeURIComponent(state.session.token)}`;
  }

  function connect() {
    const client = new LinkdClient({
      // Called before every attempt: a demo session gets a fresh token each time.
      url: async () => {
        if (state.session.demo) {
          state.session = await demoToken(state.session.user.id);
        }
        return wsUrl();
      },
      onState: showState,
    });
    state.client = client;
    client.on("chat.message", onMessage);
    client.on("user.typing", onTyping);
    client.on("user.online", (d) => setOnline(d, true));
    client.on("user.offline", (d) => setOnline(d, false));
    client.on("user.joined", (d) => setOnline(d, true));
    client.on("user.left", (d) => systemLine(d.roomId, `${d.username} left`));
    // Missed messages were replayed as chat.message events; when the engine could not
    // prove it had them all, read the open room's history instead.
    client.onRecovered((stream, recovered) => {
      if (!recovered && stream.kind === "room" && stream.name === state.current) {
        openRoom(state.current);
      }
    });
    client.connect();
  }

  function showState(s, detail) {
    const el = $("conn-state");
    el.dataset.state = s;
    const text = {
      connecting: "connecting…",
      open: "connected",
      closed: "disconnected",
    };
    if (s === "reconnecting") {
      el.textContent = detail.delay ? `reconnecting in ${Math.ceil(detail.delay / 1000)} s…` : "reconnecting…";
    } else {
      el.textContent = text[s] || s;
    }
    const usable = s === "open" && state.current !== null;
    $("message-input").disabled = !usable;
    $("send").disabled = !usable;
    if (s === "open" && state.current) {
      // Back after a drop: rejoin. The history is reloaded only if the room cannot be
      // recovered (no position was sent for it); otherwise the verdict decides.
      const recovering = state.client && state.client.recovering;
      openRoom(state.current, { history: !(recovering && recovering.rooms[state.current]) });
    }
  }

  // ------------------------------------------------------------------ rooms
  async function loadRooms() {
    const { rooms } = await api("GET", "/chat/rooms");
    state.rooms = new Map(rooms.map((r) => [r.id, r]));
    renderRooms();
  }

  function renderRooms() {
    const list = $("room-list");
    list.replaceChildren();
    for (const room of state.rooms.values()) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.roomId = room.id;
      button.textContent = room.type === "private" ? `${room.name} (private)` : `# ${room.name}`;
      if (room.id === state.current) button.setAttribute("aria-current", "true");
      const unread = state.unread.get(room.id);
      if (unread) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = String(unread);
        button.append(badge);
      }
      button.addEventListener("click", () => openRoom(room.id));
      li.append(button);
      list.append(li);
    }
  }

  function clearRoom() {
    state.shown.clear();
    state.oldest = null;
    $("message-list").replaceChildren();
    $("load-older").hidden = true;
    clearPeople();
  }

  function clearPeople() {
    state.members.clear();
    state.online.clear();
    for (const { timer } of state.typing.values()) clearTimeout(timer);
    state.typing.clear();
    $("typing").textContent = "";
    $("members").replaceChildren();
  }

  async function openRoom(roomId, options) {
    const reload = !options || options.history !== false;
    const client = state.client;
    if (roomId !== state.current) stopTyping();
    // Remembered even when offline: the room opens as soon as the connection does.
    state.current = roomId;
    sessionStorage.setItem(ROOM_KEY, roomId);
    if (!client || !client.connected) return;
    state.unread.delete(roomId);
    renderRooms();
    $("chat-error").textContent = "";
    try {
      const joined = await client.request("chat.join", { room: roomId });
      const [details, page] = await Promise.all([
        api("GET", `/chat/rooms/${roomId}`),
        reload ? client.request("chat.history", { room: roomId, limit: HISTORY_PAGE }) : null,
      ]);
      if (state.current !== roomId) return; // the user moved on meanwhile
      if (reload) clearRoom();
      else clearPeople(); // keep the messages shown (and those replayed meanwhile)
      $("room-title").textContent = joined.room.name;
      $("room-info").textContent = `${joined.memberCount} members · ${joined.room.type}`;
      $("leave").hidden = false;
      for (const m of details.members) state.members.set(m.userId, m);
      for (const u of joined.online) state.online.add(u.userId);
      renderMembers();
      if (page) showPage(page, false);
      $("message-input").disabled = false;
      $("send").disabled = false;
      $("message-input").focus();
    } catch (err) {
      $("chat-error").textContent = `Cannot open the room: ${err.message}`;
    }
  }

  async function leaveRoom() {
    const roomId = state.current;
    if (!roomId || !state.client) return;
    try {
      await state.client.request("chat.leave", { room: roomId });
    } catch (err) {
      $("chat-error").textContent = err.message;
    }
    state.current = null;
    sessionStorage.removeItem(ROOM_KEY);
    clearRoom();
    $("room-title").textContent = "Pick a room";
    $("room-info").textContent = "";
    $("leave").hidden = true;
    $("message-input").disabled = true;
    $("send").disabled = true;
    renderRooms();
  }

  async function createRoom(ev) {
    ev.preventDefault();
    const name = $("new-room-name").value.trim();
    const type = $("new-room-private").checked ? "private" : "public";
    try {
      const room = await api("POST", "/chat/rooms", { name, type });
      $("new-room-name").value = "";
      await loadRooms();
      await openRoom(room.id);
    } catch (err) {
      $("chat-error").textContent = `Cannot create the room: ${err.message}`;
    }
  }

  function renderMembers() {
    const list = $("members");
    list.replaceChildren();
    for (const [userId, m] of state.members) {
      const li = document.createElement("li");
      li.dataset.userId = userId;
      const online = state.online.has(userId);
      li.className = online ? "online" : "offline";
      li.textContent = m.username;
      li.title = `${m.role}, ${online ? "online" : "offline"}`;
      list.append(li);
    }
  }

  function setOnline(data, online) {
    // user.online/offline come once per user with every shared room in roomIds;
    // user.joined names its one room in roomId.
    const rooms = data.roomIds || [data.roomId];
    if (!rooms.includes(state.current)) return;
    if (online) state.online.add(data.userId);
    else state.online.delete(data.userId);
    if (!state.members.has(data.userId)) {
      state.members.set(data.userId, { userId: data.userId, username: data.username, role: "member" });
    }
    renderMembers();
  }

  // ------------------------------------------------------------------ messages
  function showPage(page, older) {
    const list = $("message-list");
    const box = $("messages");
    const items = page.messages.filter((m) => !state.shown.has(m.id)).map(renderMessage);
    if (older) {
      const before = box.scrollHeight;
      list.prepend(...items);
      box.scrollTop += box.scrollHeight - before; // keep the view where it was
    } else {
      list.append(...items);
      box.scrollTop = box.scrollHeight;
    }
    if (page.messages.length) {
      if (older || state.oldest === null) state.oldest = page.messages[0].id;
    }
    $("load-older").hidden = !page.hasMore;
  }

  async function loadOlder() {
    if (!state.current || !state.oldest) return;
    try {
      const page = await state.client.request("chat.history", {
        room: state.current,
        limit: HISTORY_PAGE,
        before: state.oldest,
      });
      showPage(page, true);
    } catch (err) {
      $("chat-error").textContent = err.message;
    }
  }

  function renderMessage(m) {
    state.shown.add(m.id);
    const li = document.createElement("li");
    li.dataset.messageId = m.id;
    if (m.messageType === "system") li.classList.add("system");
    if (state.session && m.userId === state.session.user.id) li.classList.add("mine");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = m.username || "someone";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = m.content;
    const time = document.createElement("time");
    time.dateTime = m.createdAt;
    time.textContent = new Date(m.createdAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    li.append(who, text, time);
    return li;
  }

  function onMessage(m) {
    if (m.roomId !== state.current) {
      state.unread.set(m.roomId, (state.unread.get(m.roomId) || 0) + 1);
      renderRooms();
      return;
    }
    if (state.shown.has(m.id)) return;
    clearTyping(m.userId);
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    $("message-list").append(renderMessage(m));
    if (state.oldest === null) state.oldest = m.id;
    if (atBottom || m.userId === state.session.user.id) box.scrollTop = box.scrollHeight;
  }

  function systemLine(roomId, text) {
    if (roomId !== state.current) return;
    const li = document.createElement("li");
    li.className = "system";
    li.textContent = text;
    $("message-list").append(li);
  }

  async function sendMessage(ev) {
    ev.preventDefault();
    const input = $("message-input");
    const message = input.value.trim();
    if (!message || !state.current) return;
    stopTyping();
    try {
      await state.client.request("chat.send", { room: state.current, message });
      input.value = "";
      $("chat-error").textContent = "";
    } catch (err) {
      $("chat-error").textContent = `Not sent: ${err.message}`;
    }
  }

  // ------------------------------------------------------------------ typing
  function onInput() {
    if (!state.current || !state.client) return;
    const now = Date.now();
    if (now - state.typingSent > TYPING_REFRESH_MS) {
      state.typingSent = now;
      state.client.send("chat.typing", { room: state.current, isTyping: true });
    }
    clearTimeout(state.typingIdle);
    state.typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    clearTimeout(state.typingIdle);
    state.typingIdle = null;
    if (state.typingSent && state.current && state.client) {
      state.client.send("chat.typing", { room: state.current, isTyping: false });
    }
    state.typingSent = 0;
  }

  function onTyping(d) {
    if (d.roomId !== state.current) return;
    if (!d.isTyping) return clearTyping(d.userId);
    const previous = state.typing.get(d.userId);
    if (previous) clearTimeout(previous.timer);
    const timer = setTimeout(() => clearTyping(d.userId), TYPING_SHOWN_MS);
    state.typing.set(d.userId, { username: d.username, timer });
    renderTyping();
  }

  function clearTyping(userId) {
    const entry = state.typing.get(userId);
    if (!entry) return;
    clearTimeout(entry.timer);
    state.typing.delete(userId);
    renderTyping();
  }

  function renderTyping() {
    const names = Array.from(state.typing.values(), (t) => t.username);
    $("typing").textContent =
      names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
  }

  // ------------------------------------------------------------------ wiring
  document.addEventListener("DOMContentLoaded", () => {
    $("token-login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      signInToken($("token-input").value.trim());
    });
    $("logout").addEventListener("click", signOut);
    $("composer").addEventListener("submit", sendMessage);
    $("message-input").addEventListener("input", onInput);
    $("load-older").addEventListener("click", loadOlder);
    $("leave").addEventListener("click", leaveRoom);
    $("new-room").addEventListener("submit", createRoom);
    start();
  });
})();
