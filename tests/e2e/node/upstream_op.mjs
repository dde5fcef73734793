// An upstream OpenID provider for tests/e2e/federation.rs: panva's oidc-provider (OpenID
// Certified) on loopback, with its development sign-in pages (any login, any password), one
// client (gatehouse), back-channel logout and RP-initiated logout on. It prints one JSON
// line when it listens: {"step": "ready", "issuer": …}, and one for each back-channel logout
// token it sends: {"step": "logout_token", "token": …} (for a test to send it again).
//
// node upstream_op.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI BACKCHANNEL_LOGOUT_URI
//
// The account is the login typed: `sub` is it, `email` is `<login>@example.org` (verified),
// except that `nomail-…` logins have no email and `unverified-…` ones an unverified one.
// `mfa-…` logins signed in with a second factor there: their id_token's `amr` says so.

import Provider from 'oidc-provider'

const [port, clientId, clientSecret, redirectUri, backchannelUri] = process.argv.slice(2)
const issuer = `http://127.0.0.1:${port}`

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    backchannel_logout_uri: backchannelUri,
    backchannel_logout_session_required: true,
  }],
  features: {
    devInteractions: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  pkce: { required: () => true },
  claims: {
    // (`amr` under openid: the id_token carries it whenever the sign-in set one.)
    openid: ['sub', 'amr'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
  },
  cookies: { keys: ['upstream-test-cookie-key'] },
  // Its SSRF guard refuses loopback, where the test's gatehouse listens: lifted here alone.
  fetch: (url, options) => {
    delete options.dispatcher
    if (options.body instanceof URLSearchParams && options.body.has('logout_token')) {
      console.log(JSON.stringify({ step: 'logout_token', token: options.body.get('logout_token') }))
    }
    return globalThis.fetch(url, options)
  },
  async findAccount (ctx, id) {
    return {
      accountId: id,
      async claims () {
        const claims = { sub: id, name: `Upstream ${id}`, preferred_username: id }
        if (!id.startsWith('nomail-')) {
          claims.email = `${id}@example.org`
          claims.email_verified = !id.startsWith('unverified-')
        }
        return claims
      },
    }
  },
})
// The development sign-in page reports no `amr`: an `mfa-…` login gets one.
const finished = provider.interactionFinished.bind(provider)
provider.interactionFinished = (req, res, result, options) => {
  if (result?.login?.accountId?.startsWith('mfa-')) {
    result.login.amr = ['pwd', 'otp']
  }
  return finished(req, res, result, options)
}
// What the test cannot see otherwise: back-channel deliveries, on stderr.
provider.on('backchannel.success', (ctx, client, accountId, sid) => {
  console.error(`upstream: back-channel logout delivered to ${client.clientId} (${accountId}, sid ${sid})`)
})
provider.on('backchannel.error', (ctx, error, client) => {
  console.error(`upstream: back-channel logout to ${client.clientId} failed: ${error} ${error.cause ?? ""}`)
})
provider.on('server_error', (ctx, error) => console.error(`upstream: ${error.stack}`))
// Plain http on loopback for the test; the provider warns and goes on.
provider.listen(Number(port), '127.0.0.1', () => {
  console.log(JSON.stringify({ step: 'ready', issuer }))
})
