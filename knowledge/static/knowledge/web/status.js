// While documents are being indexed, fetch the page again every few seconds and swap in the new
// status list, unless the keyboard focus is inside it (a swap would lose the user's place).
(function () {
  "use strict";
  var INTERVAL_MS = 3000;
  function refresh() {
    var current = document.getElementById("documents");
    if (!current || current.dataset.refresh !== "on") return;
    if (current.contains(document.activeElement)) return setTimeout(refresh, INTERVAL_MS);
    fetch(window.location.pathname, { credentials: "same-origin" })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("documents");
        if (fresh) current.replaceWith(fresh);
      })
      .finally(function () { setTimeout(refresh, INTERVAL_MS); });
  }
  document.addEventListener("DOMContentLoaded", function () { setTimeout(refresh, INTERVAL_MS); });
})();
