using System.Security.Cryptography;
using Haven.Core;

namespace Haven.Protocol;

/// <summary>
/// The text an administrator hands to a new client: <c>hvn1.SECRET.CAFINGERPRINT[.KEYSECRET]</c>, each part base64url
/// of 32 bytes. The secret proves the right to enrol (the server keeps only its SHA-256); the fingerprint is the
/// SHA-256 of the server CA's certificate, so the agent can tell the real server from an impostor before it sends
/// anything. The optional key secret opens a key file of the tenant's repository (docs/key-model.md): the admin CLI
/// made it and never sent it to the server, and the agent never sends it either (<see cref="ServerPart"/>).
/// </summary>
public readonly record struct EnrollmentToken(byte[] Secret, byte[] CaFingerprint, byte[]? KeySecret = null)
{
    public const string Prefix = "hvn1.";

    public static EnrollmentToken Create(byte[] caFingerprint) => new(RandomNumberGenerator.GetBytes(32), caFingerprint);

    public override string ToString() => ServerPart + (KeySecret is { } k ? "." + Base64Url.Encode(k) : "");

    /// <summary>The token without the key secret: what the server issues and what the agent sends back.</summary>
    public string ServerPart => Prefix + Base64Url.Encode(Secret) + "." + Base64Url.Encode(CaFingerprint);

    /// <summary>The key secret as the password of its key file.</summary>
    public string? KeyPassword => KeySecret is { } k ? Base64Url.Encode(k) : null;

    /// <summary>SHA-256 of the secret, hex: what the server stores and looks tokens up by.</summary>
    public string SecretHash => Convert.ToHexStringLower(SHA256.HashData(Secret));

    public static bool TryParse(string? text, out EnrollmentToken token)
    {
        token = default;
        if (text is null || !text.StartsWith(Prefix, StringComparison.Ordinal))
        {
            return false;
        }

        var parts = text[Prefix.Length..].Trim().Split('.');
        if (parts.Length is not (2 or 3) || !Base64Url.TryDecode(parts[0], out var secret) || !Base64Url.TryDecode(parts[1], out var fingerprint)
            || secret.Length != 32 || fingerprint.Length != 32)
        {
            return false;
        }

        byte[]? keySecret = null;
        if (parts.Length == 3 && (!Base64Url.TryDecode(parts[2], out keySecret) || keySecret.Length != 32))
        {
            return false;
        }

        token = new EnrollmentToken(secret, fingerprint, keySecret);
        return true;
    }

    public static EnrollmentToken Parse(string text) =>
        TryParse(text, out var token)
            ? token
            : throw new HavenException(ErrorCode.Usage, "the enrolment token is malformed", "copy the whole token the administrator gave you; it starts with 'hvn1.'");
}

/// <summary>RFC 4648 §5 base64url without padding.</summary>
public static class Base64Url
{
    public static string Encode(ReadOnlySpan<byte> bytes) => System.Buffers.Text.Base64Url.EncodeToString(bytes);

    public static bool TryDecode(string text, out byte[] bytes)
    {
        try
        {
            bytes = System.Buffers.Text.Base64Url.DecodeFromChars(text);
            return true;
        }
        catch (FormatException)
        {
            bytes = [];
            return false;
        }
    }
}
