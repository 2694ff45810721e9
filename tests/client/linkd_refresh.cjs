// clients/js/linkd.js through a real engine: the token in the URL expires in ~3 s,
// refreshToken hands over argv[3]; the client must refresh on its own, stay
// connected past the first token's exp, and keep its room. Prints one JSON line.
"use strict";
const { LinkdClient } = require("../../clients/js/linkd.js");

const [url, fresh, firstExp] = process.argv.slice(2);
let calls = 0;
const notes = [];
const client = new LinkdClient({
  url,
  refreshBefore: 30000, // longer than the token lives: refreshes halfway
  refreshToken: async () => {
    calls += 1;
    return fresh;
  },
});
client.on("media.note", (data) => notes.push(data));

function until(check, ms) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      if (check()) resolve();
      else if (Date.now() - started > ms) reject(new Error("timed out"));
      else setTimeout(poll, 20);
    };
    poll();
  });
}

(async () => {
  client.connect();
  await until(() => client.connected, 5000);
  await client.request("join", { room: "js-room" });
  // Past the first token's exp (plus a margin for the engine's timer).
  await until(() => Date.now() > Number(firstExp) * 1000 + 800, 10000);
  const me = await client.request("me");
  await client.request("emit", { room: "js-room", data: "after" });
  await until(() => notes.length > 0, 5000);
  const out = { calls, me, notes, state: client.state, reconnects: client.stats.reconnects };
  client.close();
  console.log(JSON.stringify(out));
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
