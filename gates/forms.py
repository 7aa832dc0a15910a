from django import forms


class SecretForm(forms.Form):
    """Collects a name and a value; gates.secrets.set_secret decides what is valid, in one place.

    The value's widget never renders what was typed (render_value=False), so a page re-shown for an
    error does not carry the secret back to the browser."""

    name = forms.CharField(
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "characters"}),
        help_text="The environment variable replicas see, e.g. OPENAI_API_KEY: capital letters, digits and _.",
    )
    value = forms.CharField(
        strip=False,  # a value is opaque: its spaces and newlines are part of it
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Up to 64 KiB. Setting a name you already have replaces its value. It is never shown again.",
    )
