#!/usr/bin/env python3
"""A second test OpenID Provider: django-oauth-toolkit (DOT) in a single-file Django project.

Written independently of `oidc-provider` (tests/idp/): the Rust integration tests run their core
flow suite against both. Loopback only, test controls guarded by a token; never use it for
anything else. See README.md beside this file.

    target/idp-dot-venv/bin/python tests/idp-dot/server.py --data-dir /tmp/dot --port 0 \
        --client '{"client_id": "demo", "client_secret": "s3cret",
                   "redirect_uris": ["http://127.0.0.1:8080/auth/callback"],
                   "post_logout_redirect_uris": ["http://127.0.0.1:8080/"]}'

On success exactly one line goes to stdout, `READY <issuer>`; everything else goes to stderr.
The process ends when its standard input reaches end-of-file (the test binary that started it
exited, however it exited) or on SIGTERM/SIGINT.
"""

import argparse
import base64
import json
import os
import signal
import sys
import threading
from collections import defaultdict
from urllib.parse import parse_qs, unquote_plus

HERE = os.path.dirname(os.path.abspath(__file__))

LOGIN_TEMPLATE = """<!doctype html>
<html><head><title>Log in</title></head><body>
<h1>Log in</h1>
{% if form.errors %}<p class="error">Your username and password didn't match.</p>{% endif %}
<form method="post" action="{% url 'login' %}">
{% csrf_token %}
<p><label>Username <input type="text" name="username" autofocus></label></p>
<p><label>Password <input type="password" name="password"></label></p>
<input type="hidden" name="next" value="{{ next }}">
<p><button type="submit">Log in</button></p>
</form>
</body></html>
"""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    p.add_argument("--data-dir", required=True, help="directory for the sqlite database (created)")
    p.add_argument("--access-token-ttl", type=int, default=3600, help="access token lifetime, seconds")
    p.add_argument("--id-token-ttl", type=int, default=3600, help="ID token lifetime, seconds")
    p.add_argument(
        "--client",
        action="append",
        default=[],
        help="a client to register, as JSON (client_id, client_secret, redirect_uris, "
        "post_logout_redirect_uris, access_token_ttl); repeatable",
    )
    p.add_argument(
        "--no-exit-on-stdin-eof",
        action="store_true",
        help="keep running when standard input closes (for running by hand in the background)",
    )
    return p.parse_args()


def main():
    args = parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    # The test controls (/test/*) answer only with this token (X-Test-Token); without one they
    # are off.
    test_token = os.environ.get("DOT_TEST_TOKEN", "")

    # Bind first: the issuer (and so the settings) names the port.
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, fmt, *a):
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % a))

    httpd = ThreadedWSGIServer(("127.0.0.1", args.port), QuietHandler, ipv6=False)
    port = httpd.server_address[1]
    origin = f"http://127.0.0.1:{port}"
    issuer = f"{origin}/o"

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()

    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY=base64.b64encode(os.urandom(32)).decode(),
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        USE_TZ=True,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "oauth2_provider",
        ],
        MIDDLEWARE=[
            __name__ + ".StatsMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            __name__ + ".CurrentUserMiddleware",
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.path.join(args.data_dir, "db.sqlite3"),
                # Many request threads, one file: wait for the write lock instead of failing,
                # and take it at the start of each transaction (no upgrade deadlocks).
                "OPTIONS": {
                    "timeout": 30,
                    "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                },
            }
        },
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": False,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                    ],
                    "loaders": [
                        ("django.template.loaders.locmem.Loader", {"registration/login.html": LOGIN_TEMPLATE}),
                        "django.template.loaders.app_directories.Loader",
                    ],
                },
            }
        ],
        # Test speed: the salted-MD5 hasher for user passwords and hashed client secrets (every
        # token request checks the secret; PBKDF2's million rounds would cost ~0.5 s each).
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        LOGIN_URL="/accounts/login/",
        SESSION_COOKIE_NAME="dot_sessionid",
        CSRF_COOKIE_NAME="dot_csrftoken",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        OAUTH2_PROVIDER={
            "OIDC_ENABLED": True,
            "OIDC_ISS_ENDPOINT": issuer,
            "OIDC_RSA_PRIVATE_KEY": rsa_pem,
            "OAUTH2_VALIDATOR_CLASS": __name__ + ".ClaimsValidator",
            "SCOPES": {
                "openid": "OpenID Connect",
                "profile": "Your name",
                "email": "Your email address",
                "offline_access": "Stay signed in",
                "introspection": "Introspect tokens",
            },
            "DEFAULT_SCOPES": ["openid"],
            # oauthlib takes a callable: a client registered with its own access_token_ttl gets
            # that, every other one --access-token-ttl.
            "ACCESS_TOKEN_EXPIRE_SECONDS": lambda request: ACCESS_TTL.get(
                getattr(request.client, "client_id", None), args.access_token_ttl
            ),
            "ID_TOKEN_EXPIRE_SECONDS": args.id_token_ttl,
            "ROTATE_REFRESH_TOKEN": True,
            "REFRESH_TOKEN_REUSE_PROTECTION": True,
            "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
            "PKCE_REQUIRED": True,
            "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
            "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
            "OIDC_RP_INITIATED_LOGOUT_ENABLED": True,
            "OIDC_RP_INITIATED_LOGOUT_ALWAYS_PROMPT": False,
            "OIDC_RP_INITIATED_LOGOUT_DELETE_TOKENS": True,
        },
        LOGGING={
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": sys.stderr}},
            "root": {"handlers": ["stderr"], "level": "WARNING"},
            "loggers": {"oauth2_provider": {"handlers": ["stderr"], "level": "DEBUG", "propagate": False}},
        },
    )

    import django

    django.setup()
    define_app(test_token)

    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)

    make_user("alice", "wonderland", "Alice Liddell", "alice@example.test")
    make_user("bob", "builder", "Bob Builder", "bob@example.test")
    for c in args.client:
        register_client(json.loads(c))

    from django.core.handlers.wsgi import WSGIHandler

    httpd.set_app(WSGIHandler())

    def stop(*_):
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not args.no_exit_on_stdin_eof:

        def watch_stdin():
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except OSError:
                pass
            os._exit(0)

        threading.Thread(target=watch_stdin, daemon=True).start()

    print(f"READY {issuer}", flush=True)
    httpd.serve_forever()


def make_user(username, password, name, email):
    from django.contrib.auth.models import User

    first, _, last = name.partition(" ")
    user, _ = User.objects.get_or_create(username=username)
    user.set_password(password)
    user.first_name, user.last_name, user.email = first, last, email
    user.save()
    return user


def register_client(c):
    """Registers (or replaces) a confidential authorization-code client that skips consent."""
    from oauth2_provider.models import get_application_model

    Application = get_application_model()
    Application.objects.filter(client_id=c["client_id"]).delete()
    app = Application(
        client_id=c["client_id"],
        client_secret=c["client_secret"],
        name=c.get("name", c["client_id"]),
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=" ".join(c.get("redirect_uris", [])),
        post_logout_redirect_uris=" ".join(c.get("post_logout_redirect_uris", [])),
        # HS256 signs ID tokens with the client secret, which must then be stored in plain.
        algorithm=c.get("algorithm", Application.RS256_ALGORITHM),
        hash_client_secret=c.get("algorithm") != Application.HS256_ALGORITHM,
        skip_authorization=True,
    )
    app.save()
    if c.get("access_token_ttl"):
        ACCESS_TTL[app.client_id] = int(c["access_token_ttl"])
    return app


# Access token lifetimes per client id (`access_token_ttl` at registration).
ACCESS_TTL = {}

# Counters per client id, for the tests (`GET /test/stats?client_id=`).
STATS = defaultdict(lambda: defaultdict(int))
STATS_LOCK = threading.Lock()


def count(client_id, key):
    with STATS_LOCK:
        STATS[client_id or "-"][key] += 1


def client_of(request, form):
    auth = request.META.get("HTTP_AUTHORIZATION", "")
    if auth.startswith("Basic "):
        try:
            decoded = base64.b64decode(auth[6:]).decode()
            return unquote_plus(decoded.split(":", 1)[0])
        except (ValueError, UnicodeDecodeError):
            return None
    return (form.get("client_id") or [None])[0]


# The Django user of the request being served on this thread (see ClaimsValidator's silent
# login: oauthlib's request does not carry it).
CURRENT = threading.local()


class CurrentUserMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        CURRENT.user = request.user
        try:
            return self.get_response(request)
        finally:
            CURRENT.user = None


class StatsMiddleware:
    """Counts what the tests check at the IdP: token requests by grant type (and refusals),
    revocations, introspections, end-session requests. Reads the form without consuming it."""

    PATHS = {"/o/token/", "/o/revoke_token/", "/o/introspect/", "/o/logout/"}

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path not in self.PATHS:
            return self.get_response(request)
        form = {}
        if request.method == "POST":
            form = parse_qs(request.body.decode("utf-8", "replace"))
        else:
            form = parse_qs(request.META.get("QUERY_STRING", ""))
        response = self.get_response(request)
        ok = 200 <= response.status_code < 400
        if request.path == "/o/token/":
            grant = (form.get("grant_type") or ["?"])[0]
            client = client_of(request, form)
            count(client, f"token_requests.{grant}")
            if not ok:
                count(client, f"token_refused.{grant}")
        elif request.path == "/o/revoke_token/":
            count(client_of(request, form), "revocations" if ok else "revocations_refused")
        elif request.path == "/o/introspect/":
            count(client_of(request, form), "introspections")
        elif request.path == "/o/logout/":
            count((form.get("client_id") or [None])[0], "end_session")
        return response


def define_app(test_token):
    """The validator (claims), the test controls and the URL patterns (this module is the
    ROOT_URLCONF)."""
    global urlpatterns, ClaimsValidator

    from django.contrib.auth import views as auth_views
    from django.http import JsonResponse
    from django.urls import include, path
    from django.utils import timezone
    from django.views.decorators.csrf import csrf_exempt
    from oauth2_provider.models import get_access_token_model, get_refresh_token_model
    from oauth2_provider.oauth2_validators import OAuth2Validator

    class ClaimsValidator(OAuth2Validator):
        # Request-agnostic (one parameter): discovery lists these in claims_supported. DOT puts
        # them into the ID token and the userinfo answer alike, each only with its scope
        # (oidc_claim_scope: name → profile, email/email_verified → email).
        def get_additional_claims(self):
            return {
                "name": lambda r: r.user.get_full_name(),
                "given_name": lambda r: r.user.first_name,
                "family_name": lambda r: r.user.last_name,
                "preferred_username": lambda r: r.user.get_username(),
                "email": lambda r: r.user.email,
                "email_verified": lambda r: True,
            }

        # prompt=none (OIDC Core 3.1.2.1). DOT leaves both to the deployment: oauthlib's
        # defaults raise NotImplementedError, so stock DOT answers prompt=none with a 500.
        def validate_silent_login(self, request):
            user = getattr(CURRENT, "user", None)
            return bool(user is not None and user.is_authenticated)

        def validate_silent_authorization(self, request):
            # Consent is pre-configured for clients that skip the consent page.
            from oauth2_provider.models import get_application_model

            app = get_application_model().objects.filter(client_id=request.client_id).first()
            return bool(app and app.skip_authorization)

    def guarded(view):
        @csrf_exempt
        def wrapper(request):
            if not test_token or request.headers.get("X-Test-Token") != test_token:
                return JsonResponse({"error": "forbidden"}, status=403)
            return view(request)

        return wrapper

    def clients(request):
        """POST {client_id, client_secret, redirect_uris, post_logout_redirect_uris, access_token_ttl?,
    algorithm? ("RS256", the default, or "HS256"), users?}:
        registers the client, and the users (username, password, name, email) if given.
        Answers each user's `sub`."""
        if request.method != "POST":
            return JsonResponse({"error": "POST only"}, status=405)
        body = json.loads(request.body)
        app = register_client(body)
        subs = {}
        for u in body.get("users", []):
            user = make_user(u["username"], u["password"], u["name"], u["email"])
            subs[u["username"]] = str(user.pk)
        return JsonResponse({"client_id": app.client_id, "subs": subs}, status=201)

    def stats(request):
        """GET ?client_id=: the counters, and how many of the client's tokens are live."""
        cid = request.GET.get("client_id", "")
        with STATS_LOCK:
            counters = dict(STATS.get(cid, {}))
        now = timezone.now()
        AccessToken = get_access_token_model()
        RefreshToken = get_refresh_token_model()
        live_at = AccessToken.objects.filter(application__client_id=cid, expires__gt=now).count()
        live_rt = RefreshToken.objects.filter(application__client_id=cid, revoked__isnull=True).count()
        revoked_rt = RefreshToken.objects.filter(application__client_id=cid, revoked__isnull=False).count()
        return JsonResponse(
            {
                "counters": counters,
                "live_access_tokens": live_at,
                "live_refresh_tokens": live_rt,
                "revoked_refresh_tokens": revoked_rt,
            }
        )

    from oauth2_provider.urls import metadata_urlpatterns

    urlpatterns = [
        path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
        # RFC 8414 §3.1 puts the metadata of issuer http://host/o at
        # http://host/.well-known/oauth-authorization-server/o: DOT's docs say to mount these at
        # the root as well.
        path("", include((metadata_urlpatterns, "oauth2_provider_root"))),
        path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
        path("test/clients", guarded(clients)),
        path("test/stats", guarded(stats)),
    ]


if __name__ == "__main__":
    main()
