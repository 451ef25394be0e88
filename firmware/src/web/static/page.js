// flowwarden status page: optional enhancements (the page works without them).
// 1. Times: the markup shows UTC; add the browser's local time in front.
// 2. Overview: refresh the verdict every 5 s while the tab is visible, one request at a time.
"use strict";
function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    if (t.dataset.local) continue;
    const d = new Date(t.getAttribute("datetime"));
    if (isNaN(d)) continue;
    t.dataset.local = "1";
    const utc = t.textContent;
    t.textContent = d.toLocaleString() + " ";
    const s = document.createElement("span");
    s.className = "local";
    s.textContent = "(" + utc + ")";
    t.appendChild(s);
  }
}
document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  const verdict = document.getElementById("verdict");
  if (!verdict || location.pathname !== "/") return;
  let busy = false;
  setInterval(async () => {
    if (busy || document.visibilityState !== "visible") return;
    busy = true;
    try {
      const r = await fetch("/", { credentials: "same-origin", redirect: "error" });
      if (r.ok) {
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const main = doc.querySelector("main");
        if (main) { document.querySelector("main").replaceWith(main); localTimes(document); }
      }
    } catch (e) { /* keep the last view */ }
    busy = false;
  }, 5000);
});
