// Drives clients/js/linkd.js (under Node with --experimental-websocket) against the
// fake engine of tests/client/support.py, whose URL is argv[2]; prints one JSON line
// with what the client saw. tests/client/test_js.py runs it and checks the result.
"use strict";
const { LinkdClient } = require("../../clients/js/linkd.js");

const url = process.argv[2];
const events = [];
const verdicts = [];
const states = [];
let wake = null;
const until = (predicate) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out: ${predicate}`)), 5000);
    const check = () => {
      if (predicate()) {
        clearTimeout(timer);
        wake = null;
        resolve();
      } else {
        wake = check;
      }
    };
    check();
  });
const poke = () => wake && wake();

async function main() {
  const client = new LinkdClient({
    url: async () => url, // a function, as the chat page uses it
    initialDelay: 10,
    maxDelay: 20,
    onState: (s) => {
      states.push(s);
      poke();
    },
    onRecovered: (stream, recovered, data) => {
      verdicts.push([stream.kind, stream.name, recovered, data.missed]);
      poke();
    },
  });
  client.on("*", (data, frame) => {
    events.push([frame.type, frame.seq === undefined ? null : frame.seq]);
    poke();
  });
  client.connect();
  await until(() => client.connected);
  await client.request("emit", { room: "r", event: "m", data: 1 });
  await client.request("repeat", { room: "r" }); // a duplicate: dropped
  const positionsBefore = client.positions();

  // Cut the connection; two events are emitted while the client is away.
  client.send("drop", { emit: [["r", "m", 2], ["r", "m", 3]] });
  await until(() => verdicts.length === 1);
  const recovering = client.recovering;
  await client.request("emit", { room: "r", event: "m", data: 4 });

  // The room's history is lost meanwhile: a new epoch, recovered false.
  await client.request("reset", { room: "r" });
  client.send("drop", { emit: [["r", "m", 5]] });
  await until(() => verdicts.length === 2);
  const positionsAfter = client.positions();
  client.close();
  console.log(
    JSON.stringify({ events, verdicts, states, stats: client.stats, positionsBefore, recovering, positionsAfter })
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
