// The chat page: send with fetch, show what the server streams (Server-Sent Events), press card buttons.
// Messages are keyed by id, so the history replayed on every (re)connect never shows anything twice.
// Each file goes first, as its own upload (the raw bytes, with the CSRF token in a header), one after the
// other; the message then names the uploads in the order chosen, so the agent gets them as attachments.
// A line not answered "sent" is sent again under the same id (its id on the bus), so it is stored once.
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
  let unsent = null; // { line, id }: the line last sent and not yet answered "sent" (it may be stored), and its id

  // `fields`: name -> value, or a list of values (sent as the name repeated).
  function post(path, fields) {
    const body = new URLSearchParams({ csrf: csrf });
    Object.keys(fields).forEach(function (k) {
      [].concat(fields[k]).forEach(function (v) { body.append(k, v); });
    });
    return fetch(path, {
      method: "POST",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded" },
      body: body,
      credentials: "same-origin",
    }).then(answer);
  }

  function answer(r) {
    if (r.ok) { error.textContent = ""; return r.json(); }
    return r.json().then(function (b) { throw new Error(b.error || r.statusText); }, function () { throw new Error(r.statusText); });
  }

  function upload(chosen) {
    return fetch("/chat/" + encodeURIComponent(chat) + "/upload?name=" + encodeURIComponent(chosen.name), {
      method: "POST",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/octet-stream" },
      body: chosen,
      credentials: "same-origin",
    }).then(answer).then(function (b) { return b.upload; });
  }

  function uploadAll(chosen) {
    return chosen.reduce(function (done, one) {
      return done.then(function (ids) { return upload(one).then(function (id) { return ids.concat([id]); }); });
    }, Promise.resolve([]));
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

  function newId() {
    return crypto.getRandomValues(new Uint32Array(4)).reduce(function (a, n) { return a + n.toString(16).padStart(8, "0"); }, "");
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    const words = text.value;
    const chosen = Array.from(file.files);
    if (!words.trim() && !chosen.length) return;
    const most = Number(form.dataset.maxFiles);
    if (chosen.length > most) { error.textContent = "a message may carry at most " + most + " files"; return; }
    const line = JSON.stringify([words, chosen.map(function (f) { return [f.name, f.size, f.lastModified]; })]);
    const id = unsent && unsent.line === line ? unsent.id : newId();
    unsent = { line: line, id: id };
    uploadAll(chosen)
      .then(function (ids) { return post(form.action, { text: words, id: id, files: ids }); })
      .then(function () {
        if (unsent && unsent.id === id) unsent = null;
        text.value = ""; file.value = "";
      }, function (err) { error.textContent = err.message; });
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
