// The TCC console's only script. Pages are complete without it; it adds two things:
// live refresh of a page's live part (same URL plus ?fragment=1, so the filters in the
// URL are kept), and the operator actions, posted as JSON to the /v1 endpoints with the
// session cookie and the page's CSRF token.
"use strict";

(function () {
  const csrfToken = () => {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  };

  // --- live refresh --------------------------------------------------------------------

  function startLiveRefresh() {
    const region = document.getElementById("live");
    if (!region || !region.dataset.live) return;
    const intervalMs = Math.max(1, Number(region.dataset.live)) * 1000;
    const controls = document.querySelector("[data-live-controls]");
    const toggle = document.querySelector("[data-live-toggle]");
    const status = document.querySelector("[data-live-status]");
    let paused = false;
    let stopped = false;
    let timer = null;

    const say = (text) => { if (status) status.textContent = text; };
    if (controls) controls.hidden = false;
    if (toggle) {
      toggle.addEventListener("click", () => {
        paused = !paused;
        toggle.setAttribute("aria-pressed", String(paused));
        toggle.textContent = paused ? "Resume live updates" : "Pause live updates";
        say(paused ? "Paused." : "");
        if (!paused) refresh();
      });
    }

    // Someone reading, typing a reason or tabbing through the table must not have the
    // ground pulled from under them.
    const busy = () =>
      region.contains(document.activeElement) && document.activeElement !== region ||
      region.querySelector("details.action[open]") !== null;

    async function refresh() {
      if (paused || stopped || document.hidden || busy()) return;
      const url = new URL(window.location.href);
      url.searchParams.set("fragment", "1");
      try {
        const response = await fetch(url, {
          credentials: "same-origin",
          headers: { Accept: "text/html" },
          cache: "no-store",
        });
        if (response.status === 401) {
          stopped = true;
          say("Your session has ended: reload the page to log in again.");
          return;
        }
        if (!response.ok) {
          say("Could not refresh (HTTP " + response.status + "); trying again.");
          return;
        }
        const html = await response.text();
        if (paused || busy()) return;
        region.innerHTML = html;
        say("Updated " + new Date().toLocaleTimeString() + ".");
        if (region.querySelector("[data-live-final]")) {
          stopped = true;
          if (controls) controls.hidden = true;
        }
      } catch (err) {
        say("Could not refresh (" + err.message + "); trying again.");
      }
    }

    timer = window.setInterval(refresh, intervalMs);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
    window.addEventListener("pagehide", () => window.clearInterval(timer));
  }

  // --- actions ----------------------------------------------------------------------------

  async function submitAction(form) {
    const field = form.dataset.field;
    const input = form.elements[field];
    const words = input.value.trim();
    const result = form.querySelector("[data-action-result]");
    const button = form.querySelector('button[type="submit"]');
    const show = (text, failed) => {
      result.textContent = text;
      result.classList.toggle("failed", Boolean(failed));
    };
    if (!words) {
      show("Say why: the reason is kept in the timeline.", true);
      input.focus();
      return;
    }
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    button.disabled = true;
    show("Working…", false);
    try {
      const response = await fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          "X-CSRF-Token": csrfToken(),
          "X-TCC-Client": "console",
        },
        body: JSON.stringify({ [field]: words }),
      });
      let body = null;
      try { body = await response.json(); } catch (err) { body = null; }
      if (!response.ok) {
        const why = body && body.detail ? body.detail : "HTTP " + response.status;
        show("Refused: " + why, true);
        button.disabled = false;
        return;
      }
      show("Done" + (body && body.status ? ": now " + body.status.replace(/_/g, " ") : "") + ".", false);
      window.setTimeout(() => window.location.reload(), 400);
    } catch (err) {
      show("Could not reach the coordinator: " + err.message, true);
      button.disabled = false;
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.hasAttribute("data-action")) {
      event.preventDefault();
      submitAction(form);
    }
  });

  // --- filters ----------------------------------------------------------------------------

  // Empty filters stay out of the URL, so a shared link says only what it filters.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-filters")) return;
    for (const element of form.elements) {
      if (element.name && element.value === "") element.disabled = true;
    }
    window.setTimeout(() => { for (const element of form.elements) element.disabled = false; }, 0);
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", startLiveRefresh);
  } else {
    startLiveRefresh();
  }
})();
