// gatehouse: passkeys on the sign-in, second-step, security and offer pages. The pages'
// one script (CSP script-src 'self'); signing in with a password and a code works without it.
//
// The server's JSON endpoints give the options of a ceremony (and set its cookie); the
// authenticator's answer goes back in a plain form post, so that the server answers with a
// page or a redirect as it does for every other form.
(function () {
  "use strict";
  if (!window.PublicKeyCredential || !navigator.credentials) {
    // No passkeys in this browser: the offer to make one is pointless, so go on.
    var offer = document.querySelector("[data-passkey-offer]");
    if (offer) { location.replace(offer.elements.rd.value || "/account"); }
    return;
  }

  function bytes(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) { s += "="; }
    return Uint8Array.from(atob(s), function (c) { return c.charCodeAt(0); });
  }
  function text(buf) {
    var s = "";
    new Uint8Array(buf).forEach(function (b) { s += String.fromCharCode(b); });
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function say(message) {
    var box = document.querySelector("[data-passkey-error]");
    if (box) { box.textContent = message; box.hidden = !message; }
  }

  // A ceremony's options from the server, with their binary fields as bytes.
  async function options(url, body) {
    var r = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body)
    });
    var j = await r.json().catch(function () { return {}; });
    if (!r.ok) { throw new Error(j.message || "The server did not answer. Please try again."); }
    var pk = j.publicKey;
    pk.challenge = bytes(pk.challenge);
    if (pk.user) { pk.user.id = bytes(pk.user.id); }
    (pk.excludeCredentials || []).concat(pk.allowCredentials || []).forEach(function (c) {
      c.id = bytes(c.id);
    });
    return pk;
  }

  function made(c) {
    return JSON.stringify({
      id: c.id, rawId: text(c.rawId), type: c.type,
      response: {
        attestationObject: text(c.response.attestationObject),
        clientDataJSON: text(c.response.clientDataJSON),
        transports: c.response.getTransports ? c.response.getTransports() : []
      },
      extensions: c.getClientExtensionResults()
    });
  }

  function asserted(c) {
    return JSON.stringify({
      id: c.id, rawId: text(c.rawId), type: c.type,
      response: {
        authenticatorData: text(c.response.authenticatorData),
        clientDataJSON: text(c.response.clientDataJSON),
        signature: text(c.response.signature),
        userHandle: c.response.userHandle ? text(c.response.userHandle) : null
      },
      extensions: c.getClientExtensionResults()
    });
  }

  function why(e) {
    if (e && e.name === "NotAllowedError") { return "The passkey request was cancelled or timed out."; }
    if (e && e.name === "InvalidStateError") { return "This device already holds a passkey for your account."; }
    return (e && e.message) || "Passkeys did not work in this browser.";
  }

  // Sign-in and second step: the answer goes into #passkey-form, which is posted.
  var form = document.getElementById("passkey-form");
  var pending = null; // the conditional (autofill) request, aborted for the button
  async function assert(purpose, mediation) {
    var publicKey = await options("/login/passkey/options", { purpose: purpose });
    var request = { publicKey: publicKey };
    if (mediation) {
      pending = new AbortController();
      request.mediation = mediation;
      request.signal = pending.signal;
    }
    var c = await navigator.credentials.get(request);
    if (!c) { return; }
    form.elements.credential.value = asserted(c);
    form.submit();
  }

  document.querySelectorAll("button[data-passkey]").forEach(function (b) {
    b.addEventListener("click", function () {
      say("");
      if (pending) { pending.abort(); pending = null; }
      assert(b.dataset.passkey, null).catch(function (e) { say(why(e)); });
    });
  });

  // Registration: the form's name and the new credential are posted.
  document.querySelectorAll("form[data-passkey=register]").forEach(function (f) {
    f.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      say("");
      if (f.elements.name && !f.elements.name.value.trim()) {
        f.elements.name.focus();
        return say("Give the passkey a name first, such as Work laptop.");
      }
      try {
        var publicKey = await options("/account/security/passkeys/options", {});
        var c = await navigator.credentials.create({ publicKey: publicKey });
        f.elements.credential.value = made(c);
        f.submit();
      } catch (e) {
        say(why(e));
      }
    });
  });

  document.querySelectorAll("[data-passkey-box]").forEach(function (el) { el.hidden = false; });

  // Autofill (conditional UI) on the sign-in form: the browser lists the user's passkeys
  // under the username field.
  var username = document.querySelector("input[autocomplete~=webauthn]");
  if (form && username && form.elements.purpose.value === "sign_in" &&
      PublicKeyCredential.isConditionalMediationAvailable) {
    PublicKeyCredential.isConditionalMediationAvailable().then(function (yes) {
      if (yes) { assert("sign_in", "conditional").catch(function () {}); }
    });
  }
})();
