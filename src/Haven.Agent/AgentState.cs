using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Haven.Core;
using Haven.Protocol;

namespace Haven.Agent;

/// <summary>What an enrolled agent keeps in its state folder (<c>agent.json</c>): whom it belongs to and where the server is.</summary>
public sealed record AgentIdentity(string ServerUrl, string CaFingerprint, string ClientId, string TenantId, string ClientName, DateTimeOffset Enrolled);

/// <summary>The secret that opens one key file of the tenant's repository (docs/key-model.md).</summary>
public sealed record RepositoryKeySecret(string KeyId, string Secret);

/// <summary>
/// The agent's state folder: <c>agent.json</c>, its certificate with its private key <c>client.pem</c> (one file, so
/// they are replaced together; mode 0600), the server CA <c>ca.pem</c> and the repository key secret
/// <c>repository-key.json</c> (0600); the daemon adds <c>cache/</c>, <c>spool/</c> and <c>queue/</c>. Every file is
/// replaced atomically (write, fsync, rename), so a crash or a kill leaves the old or the new state, never a mix. It
/// survives restarts; deleting it means enrolling again.
/// </summary>
public sealed class AgentState
{
    public AgentState(string folder) => Folder = Path.GetFullPath(folder);

    public string Folder { get; }

    /// <summary>/var/lib/haven/agent for root, else ~/.local/state/haven/agent; HAVEN_AGENT_STATE overrides.</summary>
    public static string DefaultFolder() =>
        Environment.GetEnvironmentVariable("HAVEN_AGENT_STATE") is { Length: > 0 } env ? env
        : Environment.UserName == "root" ? "/var/lib/haven/agent"
        : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "state", "haven", "agent");

    private string IdentityPath => Path.Combine(Folder, "agent.json");

    private string CertificatePath => Path.Combine(Folder, "client.pem");

    private string CaPath => Path.Combine(Folder, "ca.pem");

    public bool IsEnrolled => File.Exists(IdentityPath);

    public AgentIdentity LoadIdentity()
    {
        if (!IsEnrolled)
        {
            throw new HavenException(ErrorCode.NotFound, $"this agent is not enrolled (no {IdentityPath})", "run 'haven agent enroll --server URL --token TOKEN' with a token from the server's administrator");
        }

        try
        {
            return JsonSerializer.Deserialize<AgentIdentity>(File.ReadAllText(IdentityPath), ProtocolJson.Options)
                ?? throw new JsonException("empty");
        }
        catch (JsonException e)
        {
            throw new HavenException(ErrorCode.Corrupt, $"the agent state {IdentityPath} is damaged: {e.Message}", "enrol the agent again (a new token from the administrator)");
        }
    }

    /// <summary>The client certificate with its private key, ready for TLS.</summary>
    public X509Certificate2 LoadCertificate()
    {
        try
        {
            string pem = File.ReadAllText(CertificatePath);
            using var fromPem = X509Certificate2.CreateFromPem(pem, pem);
            // Through PKCS#12: a certificate whose key came from PEM cannot always be used by SslStream directly.
            return X509CertificateLoader.LoadPkcs12(fromPem.Export(X509ContentType.Pkcs12), null);
        }
        catch (Exception e) when (e is CryptographicException or IOException)
        {
            throw new HavenException(ErrorCode.Corrupt, $"the agent's certificate or key in {Folder} cannot be read: {e.Message}", "enrol the agent again (a new token from the administrator)");
        }
    }

    /// <summary>The server CA saved at enrolment (checked then against the token's fingerprint), checked again here.</summary>
    public X509Certificate2 LoadCa()
    {
        var identity = LoadIdentity();
        try
        {
            var ca = X509Certificate2.CreateFromPem(File.ReadAllText(CaPath));
            if (Pinning.Fingerprint(ca) != identity.CaFingerprint)
            {
                throw new CryptographicException("its fingerprint is not the one recorded at enrolment");
            }

            return ca;
        }
        catch (Exception e) when (e is CryptographicException or IOException)
        {
            throw new HavenException(ErrorCode.Corrupt, $"the server CA in {CaPath} cannot be used: {e.Message}", "enrol the agent again (a new token from the administrator)");
        }
    }

    public void Save(AgentIdentity identity, string keyPem, string certificatePem, string caPem)
    {
        Directory.CreateDirectory(Folder);
        File.SetUnixFileMode(Folder, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        SaveCertificate(keyPem, certificatePem);
        WriteAtomically(CaPath, caPem);
        WriteAtomically(IdentityPath, JsonSerializer.Serialize(identity, ProtocolJson.Options));
    }

    private string RepositoryKeyPath => Path.Combine(Folder, "repository-key.json");

    /// <summary>Saves the secret that opens the tenant repository's key file <paramref name="keyId"/> (owner-only file).</summary>
    public void SaveRepositoryKey(string keyId, string secret) =>
        WriteAtomically(RepositoryKeyPath, JsonSerializer.Serialize(new RepositoryKeySecret(keyId, secret), ProtocolJson.Options), secret: true);

    /// <summary>The repository key secret from enrolment, or null when the token carried none.</summary>
    public RepositoryKeySecret? LoadRepositoryKey()
    {
        if (!File.Exists(RepositoryKeyPath))
        {
            return null;
        }

        try
        {
            return JsonSerializer.Deserialize<RepositoryKeySecret>(File.ReadAllText(RepositoryKeyPath), ProtocolJson.Options);
        }
        catch (Exception e) when (e is JsonException or IOException)
        {
            throw new HavenException(ErrorCode.Corrupt, $"{RepositoryKeyPath} cannot be read: {e.Message}", "enrol the agent again, or give the repository password another way");
        }
    }

    public void SaveCertificate(string keyPem, string certificatePem) => WriteAtomically(CertificatePath, certificatePem.TrimEnd() + "\n" + keyPem.TrimEnd() + "\n", secret: true);

    private static void WriteAtomically(string path, string content, bool secret = false)
    {
        string temp = path + ".tmp";
        var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write };
        if (secret)
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        using (var stream = new FileStream(temp, options))
        {
            using var writer = new StreamWriter(stream);
            writer.Write(content);
            writer.Flush();
            stream.Flush(flushToDisk: true);
        }

        File.Move(temp, path, overwrite: true);
    }
}
