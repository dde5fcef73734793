// An independent relying party for tests/e2e/oidc.rs: panva's openid-client (OpenID
// Certified), driven over real HTTP against a running gatehouse. The browser's part is the
// test's: this script prints one JSON object per line on stdout (`{"step": …}`) and, where a
// person would act, reads one line from stdin (the URL the browser was sent back to, or
// "ok"). Any failed check throws, which exits non-zero with the error on stderr.
//
// node oidc_rp.mjs ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI POST_LOGOUT_URI

import * as client from 'openid-client'
import { createInterface } from 'node:readline'

const [issuer, clientId, clientSecret, redirectUri, postLogoutUri] = process.argv.slice(2)
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()
const say = (step, fields = {}) => console.log(JSON.stringify({ step, ...fields }))
const hear = async () => (await lines.next()).value
const check = (ok, what) => {
  if (!ok) throw new Error(`check failed: ${what}`)
}

// Discovery (plain http on loopback: allowed for this test only).
const config = await client.discovery(new URL(issuer), clientId, clientSecret, undefined, {
  execute: [client.allowInsecureRequests],
})
const meta = config.serverMetadata()
check(meta.issuer === issuer, 'issuer')
check(meta.backchannel_logout_supported === true, 'backchannel_logout_supported')

// The code flow with PKCE, state and nonce; the id_token is validated by the library
// (signature from the JWKS, iss, aud, exp, iat, nonce; iss in the response, RFC 9207).
const verifier = client.randomPKCECodeVerifier()
const nonce = client.randomNonce()
const state = client.randomState()
const url = client.buildAuthorizationUrl(config, {
  redirect_uri: redirectUri,
  scope: 'openid profile email',
  code_challenge: await client.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  nonce,
  state,
})
say('authorize', { url: url.href })
const back = new URL(await hear())
const tokens = await client.authorizationCodeGrant(config, back, {
  pkceCodeVerifier: verifier,
  expectedNonce: nonce,
  expectedState: state,
  idTokenExpected: true,
})
const claims = tokens.claims()
check(claims.nonce === nonce, 'nonce')
check(typeof claims.sid === 'string', 'sid')

// UserInfo, with the library's check that its sub is the id_token's.
const info = await client.fetchUserInfo(config, tokens.access_token, claims.sub)

// A refresh: a new id_token of the same user, validated again by the library.
const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token)
const again = refreshed.claims()
check(again.sub === claims.sub, 'refreshed sub')
check(again.auth_time === claims.auth_time, 'refreshed auth_time')
say('tokens', { claims, userinfo: info, refreshed: again })

// RP-initiated logout: the browser follows the URL; gatehouse must send it back here.
const logout = client.buildEndSessionUrl(config, {
  id_token_hint: refreshed.id_token,
  post_logout_redirect_uri: postLogoutUri,
  state: 'bye',
})
say('logout', { url: logout.href })
check((await hear()) === `${postLogoutUri}?state=bye`, 'sent back after logout')

// The device grant: the user types the code in a browser; the library polls.
const device = await client.initiateDeviceAuthorization(config, { scope: 'openid email' })
say('device', { user_code: device.user_code, verification_uri: device.verification_uri })
const deviceTokens = await client.pollDeviceAuthorizationGrant(config, device)
check(deviceTokens.claims().sub === claims.sub, 'device sub')
say('device_tokens', { claims: deviceTokens.claims() })
say('done')
process.exit(0)
