// Passkeys and security keys in the browser.
//
// A form marked with data-webauthn asks the server for options (a POST to
// its data-options-url, with the form's CSRF token), lets the browser talk
// to the authenticator, then posts the answer as JSON in the form's hidden
// "credential" field. The server does every check; this file only carries.
//
//   data-webauthn="register"      create a credential (portal, set-up)
//   data-webauthn="authenticate"  the MFA step after the password
//   data-webauthn="passkey"       sign in without a password; saved passkeys
//                                 are also offered in the email field's
//                                 autofill (conditional mediation)
"use strict";

(() => {
  const supported =
    typeof window.PublicKeyCredential === "function" &&
    typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function" &&
    typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function";

  // Thrown once the page is already going elsewhere: nothing to show.
  class Leaving extends Error {}

  function showError(form, message) {
    const box = form.querySelector(".webauthn-error");
    if (box) {
      box.textContent = message;
      box.hidden = false;
    }
  }

  function clearError(form) {
    const box = form.querySelector(".webauthn-error");
    if (box) {
      box.textContent = "";
      box.hidden = true;
    }
  }

  function busy(form, on) {
    for (const button of form.querySelectorAll("button")) {
      button.disabled = on;
      button.setAttribute("aria-busy", on ? "true" : "false");
    }
  }

  async function fetchOptions(form, signal) {
    const token = form.querySelector('input[name="csrf_token"]').value;
    const response = await fetch(form.dataset.optionsUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": token, Accept: "application/json" },
      signal,
    });
    if (response.redirected) {
      // Sent to sign in again (the sign-in is too old for this change).
      window.location.assign(response.url);
      throw new Leaving();
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (body && body.location) {
      window.location.assign(body.location);
      throw new Leaving();
    }
    if (!response.ok || body === null) {
      throw new Error(
        (body && body.message) ||
          "Portcullis could not be reached. Reload the page and try again.",
      );
    }
    return body;
  }

  function describe(error, mode) {
    switch (error.name) {
      case "NotAllowedError":
        return "The request was cancelled or timed out. Try again.";
      case "InvalidStateError":
        return mode === "register"
          ? "This authenticator is already registered to your account."
          : "Another request is still open. Try again.";
      case "SecurityError":
        return "Your browser refused the request for this address.";
      default:
        return error.message || "Something went wrong. Try again.";
    }
  }

  function send(form, credential) {
    form.querySelector('input[name="credential"]').value = JSON.stringify(
      credential.toJSON(),
    );
    // submit() sends the form without firing "submit" again.
    form.submit();
  }

  async function ceremony(form, mode, signal) {
    const options = await fetchOptions(form, signal);
    if (mode === "register") {
      return navigator.credentials.create({
        publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options),
        signal,
      });
    }
    return navigator.credentials.get({
      publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options),
      signal,
    });
  }

  // The autofill request of the sign-in page, pending until the person
  // picks a passkey there, or aborted when they use the button instead.
  let autofill = null;

  async function stopAutofill() {
    if (autofill) {
      const { controller, done } = autofill;
      autofill = null;
      controller.abort();
      await done;
    }
  }

  function startAutofill(form) {
    const controller = new AbortController();
    const done = (async () => {
      try {
        const options = await fetchOptions(form, controller.signal);
        const credential = await navigator.credentials.get({
          publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options),
          mediation: "conditional",
          signal: controller.signal,
        });
        if (credential) {
          busy(form, true);
          send(form, credential);
        }
      } catch (error) {
        // Aborted for the button, or never picked: nothing to say.
        if (!controller.signal.aborted && !(error instanceof Leaving)) {
          if (error.name !== "NotAllowedError" && error.name !== "AbortError") {
            showError(form, describe(error, "passkey"));
          }
        }
      }
    })();
    autofill = { controller, done };
  }

  function attach(form) {
    const mode = form.dataset.webauthn;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearError(form);
      if (!supported) {
        showError(
          form,
          "This browser cannot use passkeys or security keys. Try an up-to-date browser.",
        );
        return;
      }
      busy(form, true);
      try {
        if (mode === "passkey") {
          await stopAutofill();
        }
        const credential = await ceremony(form, mode);
        if (!credential) {
          throw new Error("No key was chosen. Try again.");
        }
        send(form, credential);
      } catch (error) {
        busy(form, false);
        if (!(error instanceof Leaving)) {
          showError(form, describe(error, mode));
        }
        if (mode === "passkey") {
          offerAutofill(form);
        }
      }
    });
    if (mode === "passkey") {
      offerAutofill(form);
    }
  }

  async function offerAutofill(form) {
    if (
      !supported ||
      typeof PublicKeyCredential.isConditionalMediationAvailable !== "function"
    ) {
      return;
    }
    if (await PublicKeyCredential.isConditionalMediationAvailable()) {
      startAutofill(form);
    }
  }

  for (const form of document.querySelectorAll("form[data-webauthn]")) {
    attach(form);
  }
})();
