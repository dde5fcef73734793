// GitHub's OAuth endpoints for tests/e2e/federation.rs: oauth2-mock-server on loopback
// (`/authorize` redirects back with a code at once, `/token` answers an access token). GitHub
// itself cannot be reached from CI; its user API is answered by the test.
//
// node github_mock.mjs PORT   → {"step": "ready", "url": …}

import { OAuth2Server } from 'oauth2-mock-server'

const [port] = process.argv.slice(2)
const server = new OAuth2Server()
await server.issuer.keys.generate('RS256')
await server.start(Number(port), '127.0.0.1')
console.log(JSON.stringify({ step: 'ready', url: server.issuer.url }))
