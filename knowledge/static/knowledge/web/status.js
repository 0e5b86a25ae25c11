// While documents are being indexed, fetch the page again every few seconds and swap in each part
// marked data-refresh (the status list, the counts beside it, a progress bar), unless the keyboard
// focus is inside one of them (a swap would lose the user's place).
(function () {
  "use strict";
  var INTERVAL_MS = 3000;
  function regions() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-refresh][id]"));
  }
  function refresh() {
    var current = regions();
    if (!current.some(function (region) { return region.dataset.refresh === "on"; })) return;
    if (current.some(function (region) { return region.contains(document.activeElement); })) {
      return setTimeout(refresh, INTERVAL_MS);
    }
    fetch(window.location.pathname + window.location.search, { credentials: "same-origin" })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        current.forEach(function (region) {
          var replacement = fresh.getElementById(region.id);
          if (replacement) region.replaceWith(replacement);
        });
      })
      .finally(function () { setTimeout(refresh, INTERVAL_MS); });
  }
  document.addEventListener("DOMContentLoaded", function () { setTimeout(refresh, INTERVAL_MS); });
})();
