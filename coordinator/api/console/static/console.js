// The TCC console's only script. Pages are complete without it; it adds: live refresh of a
// page's live part (same URL plus ?fragment=1, so the filters in the URL are kept), the
// operator actions, posted as JSON to the /v1 endpoints with the session cookie and the
// page's CSRF token (the live part refreshed after each answer), and copy buttons.
"use strict";

// What needs this script is shown only once it runs (console.css hides .needs-js).
document.documentElement.classList.add("js");

(function () {
  const csrfToken = () => {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  };

  // --- live refresh --------------------------------------------------------------------

  // The page's live part: refreshed every few seconds where the page asks for it
  // (data-live), and at once after an action, whatever the page.
  const live = (function () {
    const region = document.getElementById("live");
    const controls = document.querySelector("[data-live-controls]");
    const toggle = document.querySelector("[data-live-toggle]");
    const status = document.querySelector("[data-live-status]");
    let paused = false;
    let stopped = false;
    let timer = null;

    const say = (text) => { if (status) status.textContent = text; };

    // Someone reading, typing a reason or tabbing through the table must not have the
    // ground pulled from under them.
    const busy = () =>
      region.contains(document.activeElement) && document.activeElement !== region ||
      region.querySelector("details.action[open]") !== null;

    // Fetches the live part and swaps it in; true when it did. ``forced``: after an
    // action, whatever the pause, the focus or an open form.
    async function refresh(forced) {
      if (!region) return false;
      if (!forced && (paused || stopped || document.hidden || busy())) return false;
      const url = new URL(window.location.href);
      url.searchParams.set("fragment", "1");
      url.hash = "";
      try {
        const response = await fetch(url, {
          credentials: "same-origin",
          headers: { Accept: "text/html" },
          cache: "no-store",
        });
        if (response.status === 401) {
          stopped = true;
          say("Your session has ended: reload the page to log in again.");
          return false;
        }
        if (!response.ok) {
          say("Could not refresh (HTTP " + response.status + "); trying again.");
          return false;
        }
        const html = await response.text();
        if (!forced && (paused || busy())) return false;
        region.innerHTML = html;
        say("Updated " + new Date().toLocaleTimeString() + ".");
        if (region.querySelector("[data-live-final]")) {
          stopped = true;
          if (controls) controls.hidden = true;
        }
        return true;
      } catch (err) {
        say("Could not refresh (" + err.message + "); trying again.");
        return false;
      }
    }

    function start() {
      if (!region || !region.dataset.live) return;
      const intervalMs = Math.max(1, Number(region.dataset.live)) * 1000;
      if (controls) controls.hidden = false;
      if (toggle) {
        toggle.addEventListener("click", () => {
          paused = !paused;
          toggle.setAttribute("aria-pressed", String(paused));
          toggle.textContent = paused ? "Resume live updates" : "Pause live updates";
          say(paused ? "Paused." : "");
          if (!paused) refresh(false);
        });
      }
      timer = window.setInterval(() => refresh(false), intervalMs);
      document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(false); });
      window.addEventListener("pagehide", () => window.clearInterval(timer));
    }

    return { refresh, start };
  })();

  // --- actions ----------------------------------------------------------------------------

  // What became of an action, said where the live part's swap does not reach.
  function flash(text, failed) {
    const box = document.querySelector("[data-flash]");
    if (!box) return false;
    box.textContent = text;
    box.classList.toggle("failed", Boolean(failed));
    box.hidden = false;
    box.focus();
    return true;
  }

  async function submitAction(form) {
    // The body field for the operator's words; none for an endpoint that takes no words
    // (closing a participant's breaker: its confirmation is all it asks).
    const field = form.dataset.field;
    const input = field ? form.elements[field] : null;
    const words = input ? input.value.trim() : "";
    const result = form.querySelector("[data-action-result]");
    const button = form.querySelector('button[type="submit"]');
    const show = (text, failed) => {
      result.textContent = text;
      result.classList.toggle("failed", Boolean(failed));
    };
    if (input && !words) {
      show("Say why: the reason is kept in the timeline.", true);
      input.focus();
      return;
    }
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    const label = button.textContent.trim();
    button.disabled = true;
    show("Working…", false);
    let response;
    try {
      response = await fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          "X-CSRF-Token": csrfToken(),
          "X-TCC-Client": "console",
        },
        body: JSON.stringify(field ? { [field]: words } : {}),
      });
    } catch (err) {
      show("Could not reach the coordinator: " + err.message, true);
      button.disabled = false;
      return;
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    let message;
    if (response.ok) {
      let now = "";
      if (body && body.status) {
        now = " The transaction is now " + body.status.replace(/_/g, " ") + ".";
      } else if (body && body.breaker_state) {
        now = " Its breaker is now " + body.breaker_state.replace(/_/g, " ") + ".";
      }
      message = label + ": done." + now;
    } else {
      const why = body && body.detail ? body.detail : "HTTP " + response.status;
      message = label + ": refused. " + why;
    }
    show(message, !response.ok);
    // Refused or not, the page may be stale (someone else may have acted): show the
    // transaction as it is now, and what became of the action above it.
    const refreshed = await live.refresh(true);
    if (!flash(message, !response.ok) && !refreshed && response.ok) window.location.reload();
    if (!refreshed) button.disabled = false;
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.hasAttribute("data-action")) {
      event.preventDefault();
      submitAction(form);
    }
  });

  // --- copying ----------------------------------------------------------------------------

  async function copy(button) {
    const text = button.dataset.copy;
    let copied = false;
    try {
      await navigator.clipboard.writeText(text);
      copied = true;
    } catch (err) {
      // No clipboard API (a plain-http page on another host): copy through a selection.
      const scratch = document.createElement("textarea");
      scratch.value = text;
      scratch.setAttribute("readonly", "");
      scratch.className = "visually-hidden";
      document.body.appendChild(scratch);
      scratch.select();
      try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
      scratch.remove();
    }
    button.textContent = copied ? "Copied" : "Copy failed";
    window.setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }

  document.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("button[data-copy]") : null;
    if (button) copy(button);
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
    document.addEventListener("DOMContentLoaded", live.start);
  } else {
    live.start();
  }
})();
