/* Agent Console: the little the pages need beyond htmx.
   Toasts close themselves after a while (or on a click); a failed htmx request becomes a toast;
   a dialog that a fragment brings opens as a modal. */
(function () {
  "use strict";
  var TOAST_MS = 6000;

  function dismiss(toast) {
    if (!toast || toast.classList.contains("is-leaving")) return;
    toast.classList.add("is-leaving");
    setTimeout(function () { toast.remove(); }, 260);
  }

  function arm(root) {
    (root || document).querySelectorAll(".toast:not([data-armed])").forEach(function (toast) {
      toast.setAttribute("data-armed", "");
      if (!toast.hasAttribute("data-sticky")) setTimeout(function () { dismiss(toast); }, TOAST_MS);
    });
  }

  function toast(level, text) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var el = document.createElement("div");
    el.className = "toast toast-" + level;
    el.setAttribute("role", level === "error" ? "alert" : "status");
    var body = document.createElement("div");
    body.className = "toast-body";
    body.textContent = text;
    var close = document.createElement("button");
    close.className = "toast-close";
    close.type = "button";
    close.setAttribute("data-dismiss", "");
    close.setAttribute("aria-label", "Close");
    close.textContent = "\u00d7";
    el.appendChild(body);
    el.appendChild(close);
    box.appendChild(el);
    arm(box);
  }

  window.consoleToast = toast;

  // A fragment that brings a <dialog data-modal> opens it as a modal; closing removes it.
  function openDialogs(root) {
    (root || document).querySelectorAll("dialog[data-modal]:not([open])").forEach(function (dialog) {
      dialog.addEventListener("close", function () { dialog.remove(); });
      dialog.showModal();
    });
  }

  // The new rule form says how many agents it would boot, as its fields change.
  document.addEventListener("input", function (event) {
    var form = event.target.closest("form");
    var note = form && form.parentNode.querySelector("[data-boot-note]");
    if (!note) return;
    var value = function (name) {
      var field = form.elements[name];
      return field ? Math.max(0, parseInt(field.value, 10) || 0) : 0;
    };
    var enabled = form.elements.enabled ? form.elements.enabled.checked : true;
    var n = enabled ? Math.min(Math.max(value("min_agents"), value("warm_pool_size")), value("max_agents")) : 0;
    note.querySelector("[data-boot-count]").textContent = n;
    note.querySelector("[data-boot-plural]").hidden = n === 1;
    note.querySelector("[data-boot-some]").hidden = !n;
    note.querySelector("[data-boot-none]").hidden = !!n;
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-dismiss]");
    if (button) dismiss(button.closest(".toast"));
  });
  document.addEventListener("DOMContentLoaded", function () { arm(document); });
  document.addEventListener("htmx:afterSettle", function () { arm(document); openDialogs(document); });
  document.addEventListener("htmx:oobAfterSwap", function () { arm(document); });
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    toast("error", "The console answered " + xhr.status + (xhr.statusText ? " " + xhr.statusText : "") + ".");
  });
  document.addEventListener("htmx:sendError", function () {
    toast("error", "The console cannot be reached. Check your connection.");
  });
})();
