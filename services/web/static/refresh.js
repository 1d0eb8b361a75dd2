// The status page reloads itself every 5 s while it is visible, so the numbers stay live.
"use strict";
setInterval(function () { if (!document.hidden) location.reload(); }, 5000);
