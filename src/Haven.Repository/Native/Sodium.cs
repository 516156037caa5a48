using System.Runtime.InteropServices;
using Haven.Core;

namespace Haven.Repository.Native;

/// <summary>Argon2id through the system's libsodium.so.23 (no managed Argon2 package is available).</summary>
public static unsafe partial class Sodium
{
    private const string Lib = "libsodium.so.23";

    /// <summary>crypto_pwhash_ALG_ARGON2ID13, a persisted constant of libsodium.</summary>
    private const int AlgArgon2id13 = 2;

    [LibraryImport(Lib, EntryPoint = "sodium_init")]
    private static partial int SodiumInit();

    [LibraryImport(Lib, EntryPoint = "crypto_pwhash")]
    private static partial int CryptoPwhash(
        byte* output, ulong outputLength, byte* password, ulong passwordLength, byte* salt,
        ulong opsLimit, nuint memLimit, int algorithm);

    private static readonly Lazy<bool> Initialized = new(() => SodiumInit() >= 0);

    /// <summary>Salt length that crypto_pwhash requires.</summary>
    public const int SaltLength = 16;

    /// <summary>Derives <paramref name="output"/>.Length bytes from a password with Argon2id v1.3 (parallelism 1).</summary>
    public static void Argon2id(ReadOnlySpan<byte> password, ReadOnlySpan<byte> salt, long iterations, long memoryBytes, Span<byte> output)
    {
        if (!Initialized.Value)
        {
            throw new HavenException(ErrorCode.Failed, "libsodium could not be initialised");
        }

        if (salt.Length != SaltLength)
        {
            throw new ArgumentException($"Argon2id needs a {SaltLength}-byte salt", nameof(salt));
        }

        fixed (byte* o = output)
        fixed (byte* p = password)
        fixed (byte* s = salt)
        {
            int rc = CryptoPwhash(o, (ulong)output.Length, p, (ulong)password.Length, s, (ulong)iterations, (nuint)memoryBytes, AlgArgon2id13);
            if (rc != 0)
            {
                throw new HavenException(ErrorCode.Failed, $"Argon2id key derivation failed (memory {memoryBytes >> 20} MiB, {iterations} iterations): out of memory or invalid parameters");
            }
        }
    }
}
