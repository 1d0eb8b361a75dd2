// A service's log, live: the server streams its last lines, then each new one (Server-Sent Events); the
// browser reconnects by itself if the stream drops, and the page keeps the newest 2000 lines.
"use strict";
(function () {
  const tail = document.getElementById("tail");
  const service = tail.dataset.service;
  const MAX = 2000;
  let lines = [];
  const events = new EventSource("/logs/" + encodeURIComponent(service) + "/events");
  events.onopen = function () { lines = []; document.body.dataset.stream = "open"; };
  events.onmessage = function (e) {
    const follow = tail.scrollTop + tail.clientHeight >= tail.scrollHeight - 4;
    lines.push(e.data);
    if (lines.length > MAX) lines = lines.slice(-MAX);
    tail.textContent = lines.join("\n");
    if (follow) tail.scrollTop = tail.scrollHeight;
  };
})();
