using System.Security.Cryptography;

namespace Haven.Repository.Crypto;

/// <summary>
/// AES-256-GCM as Haven stores it: <c>nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)</c>, with a random nonce for
/// every object. Random 96-bit nonces stay safe for 2^32 objects under one key (NIST SP 800-38D §8.3); at Haven's
/// 1 MiB mean chunk that is about 4 PiB of unique data per repository, documented as the limit in the format.
/// Thread-safe: every thread keeps its own AesGcm instance per key.
/// </summary>
public sealed class Aead
{
    public const int NonceLength = 12;
    public const int TagLength = 16;
    public const int Overhead = NonceLength + TagLength;

    private readonly byte[] _key;
    private readonly ThreadLocal<AesGcm> _cipher;

    public Aead(byte[] key)
    {
        _key = key;
        _cipher = new ThreadLocal<AesGcm>(() => new AesGcm(_key, TagLength));
    }

    /// <summary>Encrypts into <paramref name="destination"/>, which must be <c>plaintext.Length + Overhead</c> long.</summary>
    public void Seal(ReadOnlySpan<byte> plaintext, ReadOnlySpan<byte> associatedData, Span<byte> destination)
    {
        var nonce = destination[..NonceLength];
        RandomNumberGenerator.Fill(nonce);
        var ciphertext = destination.Slice(NonceLength, plaintext.Length);
        var tag = destination.Slice(NonceLength + plaintext.Length, TagLength);
        _cipher.Value!.Encrypt(nonce, plaintext, ciphertext, tag, associatedData);
    }

    public byte[] Seal(ReadOnlySpan<byte> plaintext, ReadOnlySpan<byte> associatedData)
    {
        var result = new byte[plaintext.Length + Overhead];
        Seal(plaintext, associatedData, result);
        return result;
    }

    /// <summary>
    /// Decrypts and authenticates; returns false when the bytes were altered, truncated or sealed under another key.
    /// <paramref name="destination"/> must be <c>sealed.Length - Overhead</c> long.
    /// </summary>
    public bool TryOpen(ReadOnlySpan<byte> sealedData, ReadOnlySpan<byte> associatedData, Span<byte> destination)
    {
        if (sealedData.Length < Overhead || destination.Length != sealedData.Length - Overhead)
        {
            return false;
        }

        var nonce = sealedData[..NonceLength];
        var ciphertext = sealedData[NonceLength..^TagLength];
        var tag = sealedData[^TagLength..];
        try
        {
            _cipher.Value!.Decrypt(nonce, ciphertext, tag, destination, associatedData);
            return true;
        }
        catch (AuthenticationTagMismatchException)
        {
            destination.Clear();
            return false;
        }
    }

    public byte[]? TryOpen(ReadOnlySpan<byte> sealedData, ReadOnlySpan<byte> associatedData)
    {
        if (sealedData.Length < Overhead)
        {
            return null;
        }

        var result = new byte[sealedData.Length - Overhead];
        return TryOpen(sealedData, associatedData, result) ? result : null;
    }
}
