using System.Security.Cryptography;
using Haven.Core;

namespace Haven.Protocol;

/// <summary>
/// The text an administrator hands to a new client: <c>hvn1.SECRET.CAFINGERPRINT</c>, both parts base64url of 32 bytes.
/// The secret proves the right to enrol (the server keeps only its SHA-256); the fingerprint is the SHA-256 of the
/// server CA's certificate, so the agent can tell the real server from an impostor before it sends anything.
/// </summary>
public readonly record struct EnrollmentToken(byte[] Secret, byte[] CaFingerprint)
{
    public const string Prefix = "hvn1.";

    public static EnrollmentToken Create(byte[] caFingerprint) => new(RandomNumberGenerator.GetBytes(32), caFingerprint);

    public override string ToString() => Prefix + Base64Url.Encode(Secret) + "." + Base64Url.Encode(CaFingerprint);

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
        if (parts.Length != 2 || !Base64Url.TryDecode(parts[0], out var secret) || !Base64Url.TryDecode(parts[1], out var fingerprint)
            || secret.Length != 32 || fingerprint.Length != 32)
        {
            return false;
        }

        token = new EnrollmentToken(secret, fingerprint);
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
