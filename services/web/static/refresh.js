// The status page reloads itself every 5 s while it is visible, so the numbers stay live; the button pauses it
// (a person reading or tabbing through the page should not have it move under them).
"use strict";
(function () {
  let live = true;
  const button = document.getElementById("live");
  if (button) {
    button.addEventListener("click", function () {
      live = !live;
      button.setAttribute("aria-pressed", String(!live));
      button.textContent = live ? "Pause live refresh" : "Resume live refresh";
    });
  }
  setInterval(function () { if (live && !document.hidden) location.reload(); }, 5000);
})();
