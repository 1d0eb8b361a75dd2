// The chat page: send with fetch, show what the server streams (Server-Sent Events), press card buttons.
// Messages are keyed by id, so the history replayed on every (re)connect never shows anything twice.
// A file goes first, as its own upload (the raw bytes, with the CSRF token in a header); the message then
// names the upload, so the agent gets it as an attachment.
"use strict";
(function () {
  const log = document.getElementById("log");
  const chat = log.dataset.chat;
  const csrf = log.dataset.csrf;
  const error = document.getElementById("error");
  const typing = document.getElementById("typing");
  const form = document.getElementById("say");
  const text = document.getElementById("text");
  const file = document.getElementById("file");

  function post(path, fields) {
    return fetch(path, {
      method: "POST",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(Object.assign({ csrf: csrf }, fields)),
      credentials: "same-origin",
    }).then(answer);
  }

  function answer(r) {
    if (r.ok) { error.textContent = ""; return r.json(); }
    return r.json().then(function (b) { throw new Error(b.error || r.statusText); }, function () { throw new Error(r.statusText); });
  }

  function upload(chosen) {
    if (!chosen) return Promise.resolve([]);
    return fetch("/chat/" + encodeURIComponent(chat) + "/upload?name=" + encodeURIComponent(chosen.name), {
      method: "POST",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/octet-stream" },
      body: chosen,
      credentials: "same-origin",
    }).then(answer).then(function (b) { return [b.upload]; });
  }

  function files(m) {
    const list = el("ul", "files");
    list.setAttribute("aria-label", "Files");
    (m.files || []).forEach(function (name, i) {
      const item = el("li", m.direction === "out" ? "" : "file");
      if (m.direction === "out") {
        const link = el("a", "file", name);
        link.href = "/chat/" + encodeURIComponent(chat) + "/files/" + encodeURIComponent(m.id) + "/" + i;
        link.setAttribute("download", "");
        item.appendChild(link);
      } else item.textContent = name;
      list.appendChild(item);
    });
    return list;
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
    if (m.files && m.files.length) li.appendChild(files(m));
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
    const chosen = file.files[0];
    if (!words.trim() && !chosen) return;
    const id = crypto.getRandomValues(new Uint32Array(4)).reduce(function (a, n) { return a + n.toString(16).padStart(8, "0"); }, "");
    upload(chosen)
      .then(function (ids) { return post(form.action, ids.length ? { text: words, id: id, files: ids[0] } : { text: words, id: id }); })
      .then(function () { text.value = ""; file.value = ""; }, function (err) { error.textContent = err.message; });
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
