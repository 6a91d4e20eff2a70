// Edgefleet console: progressive enhancement only. Every page works without this.
// - [data-live="URL"] [data-every="S"]: refresh that part of the page every S seconds
//   (the server answers the fragment when asked with X-Live: 1), paused while hidden.
// - [data-confirm="text"] on a submit button: ask before posting.
// - [data-print]: print the page (a token's label).
(function () {
  "use strict";
  function refresh(el) {
    if (document.hidden) return;
    fetch(el.dataset.live, { headers: { "X-Live": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401 || r.redirected) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined && html !== el.dataset.last) {
          el.dataset.last = html;
          el.innerHTML = html;
        }
      })
      .catch(function () { /* offline for a moment: try again next time */ });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var every = Math.max(parseFloat(el.dataset.every || "5"), 1) * 1000;
      setInterval(function () { refresh(el); }, every);
    });
  });
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("[data-confirm]");
    if (btn && !window.confirm(btn.dataset.confirm)) ev.preventDefault();
    if (ev.target.closest("[data-print]")) window.print();
  });
})();
