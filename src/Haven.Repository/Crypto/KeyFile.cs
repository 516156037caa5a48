using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Haven.Core;
using Haven.Repository.Model;
using Haven.Repository.Native;

namespace Haven.Repository.Crypto;

/// <summary>Parameters of the password-based key derivation of one key file (persisted as JSON).</summary>
public sealed record KdfParameters
{
    public const string Argon2id = "argon2id";
    public const string Pbkdf2Sha256 = "pbkdf2-sha256";

    [JsonPropertyName("algorithm")] public required string Algorithm { get; init; }

    /// <summary>Argon2id memory in KiB; unused for PBKDF2.</summary>
    [JsonPropertyName("memory_kib")] public long MemoryKiB { get; init; }

    [JsonPropertyName("iterations")] public long Iterations { get; init; }

    [JsonPropertyName("parallelism")] public int Parallelism { get; init; } = 1;

    [JsonPropertyName("salt")] public required byte[] Salt { get; init; }

    /// <summary>Argon2id with 64 MiB and 3 passes: about 90 ms on this project's reference machine (ENVIRONMENT.md).</summary>
    public static KdfParameters DefaultArgon2id() => new()
    {
        Algorithm = Argon2id,
        MemoryKiB = 64 * 1024,
        Iterations = 3,
        Parallelism = 1,
        Salt = RandomNumberGenerator.GetBytes(Sodium.SaltLength),
    };

    /// <summary>
    /// For key files opened by a random 256-bit secret rather than a chosen password (enrolment keys,
    /// docs/key-model.md): guessing is hopeless whatever the cost, so the derivation is kept cheap.
    /// </summary>
    public static KdfParameters ForRandomSecret() => new()
    {
        Algorithm = Argon2id,
        MemoryKiB = 8 * 1024,
        Iterations = 1,
        Parallelism = 1,
        Salt = RandomNumberGenerator.GetBytes(Sodium.SaltLength),
    };

    /// <summary>Cheap parameters for tests only (never chosen by the CLI).</summary>
    public static KdfParameters ForTests() => ForRandomSecret();

    public byte[] DeriveKey(string password)
    {
        byte[] passwordBytes = Encoding.UTF8.GetBytes(password);
        var key = new byte[MasterKey.KeyLength];
        switch (Algorithm)
        {
            case Argon2id:
                if (Parallelism != 1 || MemoryKiB < 8 || MemoryKiB > 4L * 1024 * 1024 || Iterations < 1 || Iterations > 100)
                {
                    throw new HavenException(ErrorCode.UnsupportedFormat, $"the key file asks for Argon2id parameters Haven does not accept (memory {MemoryKiB} KiB, {Iterations} iterations, parallelism {Parallelism})");
                }

                Sodium.Argon2id(passwordBytes, Salt, Iterations, MemoryKiB * 1024, key);
                break;
            case Pbkdf2Sha256:
                if (Iterations < 600_000 || Iterations > 100_000_000)
                {
                    throw new HavenException(ErrorCode.UnsupportedFormat, $"the key file asks for {Iterations} PBKDF2 iterations; Haven accepts 600000 to 100000000");
                }

                Rfc2898DeriveBytes.Pbkdf2(passwordBytes, Salt, key, (int)Iterations, HashAlgorithmName.SHA256);
                break;
            default:
                throw new HavenException(ErrorCode.UnsupportedFormat, $"the key file uses the unknown key derivation '{Algorithm}'", "a newer Haven may have written it");
        }

        CryptographicOperations.ZeroMemory(passwordBytes);
        return key;
    }
}

/// <summary>One key slot: the master key wrapped under a password-derived key. Stored as <c>keys/&lt;sha256&gt;</c>.</summary>
public sealed record KeyFile
{
    public const int CurrentVersion = 1;

    /// <summary>Associated data that binds the wrapped master key to its purpose.</summary>
    internal static readonly byte[] AssociatedData = "haven key v1"u8.ToArray();

    [JsonPropertyName("version")] public int Version { get; init; } = CurrentVersion;

    [JsonPropertyName("created")] public DateTimeOffset Created { get; init; }

    [JsonPropertyName("hostname")] public string Hostname { get; init; } = "";

    [JsonPropertyName("username")] public string Username { get; init; } = "";

    [JsonPropertyName("kdf")] public required KdfParameters Kdf { get; init; }

    /// <summary>AES-256-GCM(derived key, master key JSON).</summary>
    [JsonPropertyName("data")] public required byte[] Data { get; init; }

    public static KeyFile Create(MasterKey master, string password, KdfParameters kdf, DateTimeOffset now)
    {
        byte[] kek = kdf.DeriveKey(password);
        try
        {
            var plain = JsonSerializer.SerializeToUtf8Bytes(new MasterKeyData(master.EncryptionKey, master.IdKey, master.ChunkerKey), RepositoryJson.Default.MasterKeyData);
            var data = new Aead(kek).Seal(plain, AssociatedData);
            CryptographicOperations.ZeroMemory(plain);
            return new KeyFile
            {
                Created = now,
                Hostname = Environment.MachineName,
                Username = Environment.UserName,
                Kdf = kdf,
                Data = data,
            };
        }
        finally
        {
            CryptographicOperations.ZeroMemory(kek);
        }
    }

    /// <summary>Returns the master key, or null when the password does not open this key file.</summary>
    public MasterKey? TryOpen(string password)
    {
        if (Version > CurrentVersion)
        {
            throw new HavenException(ErrorCode.UnsupportedFormat, $"a key file has version {Version}; this Haven reads version {CurrentVersion}", "upgrade Haven");
        }

        byte[] kek = Kdf.DeriveKey(password);
        try
        {
            var plain = new Aead(kek).TryOpen(Data, AssociatedData);
            if (plain is null)
            {
                return null;
            }

            var data = JsonSerializer.Deserialize(plain, RepositoryJson.Default.MasterKeyData)
                ?? throw new HavenException(ErrorCode.Corrupt, "a key file holds an empty master key");
            CryptographicOperations.ZeroMemory(plain);
            return new MasterKey(data.Encryption, data.Id, data.Chunker);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(kek);
        }
    }

    public byte[] Serialize() => JsonSerializer.SerializeToUtf8Bytes(this, RepositoryJson.Default.KeyFile);

    public static KeyFile Parse(ReadOnlySpan<byte> bytes, string name)
    {
        try
        {
            return JsonSerializer.Deserialize(bytes, RepositoryJson.Default.KeyFile)
                ?? throw new JsonException("empty");
        }
        catch (JsonException e)
        {
            throw new HavenException(ErrorCode.Corrupt, $"key file keys/{name} is damaged: {e.Message}", "remove it with 'haven key remove' using another key, or restore it from a copy", e);
        }
    }
}

public sealed record MasterKeyData(
    [property: JsonPropertyName("encryption")] byte[] Encryption,
    [property: JsonPropertyName("id")] byte[] Id,
    [property: JsonPropertyName("chunker")] byte[] Chunker);
