using System.Security.Cryptography;
using Haven.Core;

namespace Haven.Repository.Crypto;

/// <summary>
/// The repository's secrets, created once at <c>init</c> and stored only wrapped in key files:
/// <list type="bullet">
/// <item><see cref="EncryptionKey"/>: AES-256-GCM key for every stored object;</item>
/// <item><see cref="IdKey"/>: HMAC-SHA256 key that turns blob content into blob ids;</item>
/// <item><see cref="ChunkerKey"/>: seeds the chunker's gear table, so cut points do not reveal content.</item>
/// </list>
/// </summary>
public sealed class MasterKey
{
    public const int KeyLength = 32;

    public MasterKey(byte[] encryptionKey, byte[] idKey, byte[] chunkerKey)
    {
        if (encryptionKey.Length != KeyLength || idKey.Length != KeyLength || chunkerKey.Length != KeyLength)
        {
            throw new HavenException(ErrorCode.Corrupt, "the master key has the wrong length", "the key file is damaged; try another key or password");
        }

        EncryptionKey = encryptionKey;
        IdKey = idKey;
        ChunkerKey = chunkerKey;
    }

    public byte[] EncryptionKey { get; }

    public byte[] IdKey { get; }

    public byte[] ChunkerKey { get; }

    public static MasterKey Generate() =>
        new(RandomNumberGenerator.GetBytes(KeyLength), RandomNumberGenerator.GetBytes(KeyLength), RandomNumberGenerator.GetBytes(KeyLength));

    /// <summary>The id of a blob: HMAC-SHA256(IdKey, plaintext).</summary>
    public ObjectId BlobId(ReadOnlySpan<byte> plaintext)
    {
        Span<byte> mac = stackalloc byte[32];
        HMACSHA256.HashData(IdKey, plaintext, mac);
        return new ObjectId(mac);
    }
}
