"""Who is calling: a bearer token (``ApiToken``) or a logged-in session (with its CSRF
token, as Django requires for a cookie)."""

from ninja.security import HttpBearer, django_auth

from ..models import ApiToken


class BearerToken(HttpBearer):
    """``Authorization: Bearer <token>``; the request acts as the token's user."""

    def authenticate(self, request, token):
        user = ApiToken.objects.user_for(token)
        if user is not None:
            request.user = user
        return user


AUTHENTICATION = [BearerToken(), django_auth]
