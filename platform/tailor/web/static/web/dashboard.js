/* Tailor dashboard: the team switcher. Written for this project (no third-party code). */
(function () {
  "use strict";
  var switcher = document.getElementById("team-switcher");
  if (switcher) {
    switcher.addEventListener("change", function () {
      window.location.href = switcher.dataset.urlTemplate.replace("TEAM_SLUG", encodeURIComponent(switcher.value));
    });
  }
})();
