// The chat page: send with fetch, show what the server streams (Server-Sent Events), press card buttons.
// Messages are keyed by id, so the history replayed on every (re)connect never shows anything twice.
"use strict";
(function () {
  const log = document.getElementById("log");
  const chat = log.dataset.chat;
  const csrf = log.dataset.csrf;
  const error = document.getElementById("error");
  const typing = document.getElementById("typing");
  const form = document.getElementById("say");
  const text = document.getElementById("text");

  function post(path, fields) {
    return fetch(path, {
      method: "POST",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(Object.assign({ csrf: csrf }, fields)),
      credentials: "same-origin",
    }).then(function (r) {
      if (r.ok) { error.textContent = ""; return r.json(); }
      return r.json().then(function (b) { throw new Error(b.error || r.statusText); });
    });
  }

  function el(tag, cls, content) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (content !== undefined) node.textContent = content;
    return node;
  }

  function bubble(m) {
    const li = el("li", "msg " + m.direction);
    li.id = "m-" + m.id;
    li.dataset.version = String(m.version);
    li.appendChild(el("span", "who", m.sender));
    li.appendChild(el("span", "text", m.text));
    const card = el("span", "card");
    if (m.card) {
      if (m.card.title) { card.appendChild(el("strong", "", m.card.title)); card.appendChild(el("p", "", m.card.body || "")); }
      (m.card.buttons || []).forEach(function (b) {
        const button = el("button", "press", b.label);
        button.type = "button";
        button.dataset.card = m.id;
        button.dataset.button = b.id;
        card.appendChild(button);
      });
    }
    li.appendChild(card);
    return li;
  }

  function show(m) {
    const old = document.getElementById("m-" + m.id);
    if (old && Number(old.dataset.version) >= m.version) return;
    const node = bubble(m);
    if (old) old.replaceWith(node); else log.appendChild(node);
    if (m.direction === "out") typing.hidden = true;
    node.scrollIntoView({ block: "end" });
  }

  const events = new EventSource("/chat/" + encodeURIComponent(chat) + "/events");
  events.onmessage = function (e) {
    const item = JSON.parse(e.data);
    if (item.kind === "message") show(item);
    else if (item.kind === "typing") typing.hidden = !item.active;
  };
  events.onopen = function () { document.body.dataset.stream = "open"; };

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    const words = text.value;
    if (!words.trim()) return;
    const id = crypto.getRandomValues(new Uint32Array(4)).reduce(function (a, n) { return a + n.toString(16).padStart(8, "0"); }, "");
    post(form.action, { text: words, id: id }).then(function () { text.value = ""; }, function (err) { error.textContent = err.message; });
  });
  text.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });

  log.addEventListener("click", function (e) {
    const button = e.target.closest("button.press");
    if (!button) return;
    button.disabled = true;
    post("/chat/" + encodeURIComponent(chat) + "/press", { card: button.dataset.card, button: button.dataset.button })
      .catch(function (err) { error.textContent = err.message; button.disabled = false; });
  });
})();
