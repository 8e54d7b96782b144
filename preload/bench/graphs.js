// Builds and drops big object graphs (issue 15's node case): ROUNDS rounds,
// each a graph of NODES objects linked to earlier ones, each holding a
// malloc'd backing store (Buffer.allocUnsafeSlow: never from node's pool)
// of 64 B - 4 KiB and a string; the graph is dropped and collected (gc()),
// then the next is built with other sizes. After the last round, 2 s of
// light activity, then "peak_kb=N end_kb=N" (resident set, /proc/self/statm).
//
//   node --expose-gc graphs.js [ROUNDS [NODES]]    (8, 200000)
'use strict';
const fs = require('fs');
const rounds = +(process.argv[2] || 8);
const nodes = +(process.argv[3] || 200000);
const page = 4; // KiB
const rss = () => +fs.readFileSync('/proc/self/statm', 'utf8').split(' ')[1] * page;
let peak = 0;
let seed = 12345;
const rand = (n) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
for (let r = 0; r < rounds; r++) {
  let graph = [];
  for (let i = 0; i < nodes; i++) {
    const size = 64 + rand(4032 >> (r % 3));
    const node = { id: i, buf: Buffer.allocUnsafeSlow(size), name: 'n' + i + '/' + r, edges: [] };
    node.buf.fill(i & 255);
    for (let e = 0; e < 3 && i > 0; e++) node.edges.push(graph[rand(i)]);
    graph.push(node);
  }
  peak = Math.max(peak, rss());
  graph = null;
  global.gc();
}
const t0 = Date.now();
const tick = setInterval(() => {
  let junk = [];
  for (let i = 0; i < 1000; i++) junk.push(Buffer.allocUnsafeSlow(100));
  junk = null;
  if (Date.now() - t0 > 2000) {
    clearInterval(tick);
    global.gc();
    console.log(`peak_kb=${Math.max(peak, rss())} end_kb=${rss()}`);
  }
}, 20);
