from django import forms

from dashboard.models import ApiToken


class TokenForm(forms.Form):
    name = forms.SlugField(
        max_length=64,
        help_text="What uses it, e.g. ci-deploy. Letters, digits, - and _.",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if ApiToken.objects.active().filter(user=self.user, name=name).exists():
            raise forms.ValidationError("You already have an active token with this name; revoke it or pick another.")
        return name
