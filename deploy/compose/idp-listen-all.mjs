// Preloaded into the project's test IdP (tests/idp/server.js) by compose.yaml:
//   node --import /deploy/idp-listen-all.mjs server.js
// server.js binds 127.0.0.1 only (it is built for the test suite). In a container that makes it
// unreachable through a published port, so this replaces that bind address with
// $IDP_LISTEN_HOST (e.g. 0.0.0.0). The issuer stays http://127.0.0.1:<port>, which is what the
// browser (through the published port) and Cloakroom (sharing the IdP's network namespace) both
// use. Development only; tests/idp itself is unchanged.
import net from 'node:net';

const host = process.env.IDP_LISTEN_HOST;
if (host) {
  const listen = net.Server.prototype.listen;
  net.Server.prototype.listen = function patchedListen(...args) {
    if (typeof args[0] === 'number' && args[1] === '127.0.0.1') {
      args[1] = host;
    }
    return listen.apply(this, args);
  };
}
