using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Haven.Core;

namespace Haven.Server.Pki;

/// <summary>
/// The server's own certificate authority: it signs the server's TLS certificate and every client certificate, and
/// its fingerprint (SHA-256 of the certificate) is what enrolment tokens carry. ECDSA P-256 throughout. The CA key
/// lives in the data folder, readable by the server's user only; whoever holds it can impersonate the server to
/// agents and enrol clients, so back up the data folder like a password.
/// </summary>
public sealed class CertificateAuthority : IDisposable
{
    private const string ServerAuthOid = "1.3.6.1.5.5.7.3.1";
    private const string ClientAuthOid = "1.3.6.1.5.5.7.3.2";

    /// <summary>Client certificates last 90 days; agents renew in the last third (from day 60).</summary>
    public static readonly TimeSpan ClientLifetime = TimeSpan.FromDays(90);

    public static readonly TimeSpan RenewBefore = TimeSpan.FromDays(30);

    private readonly ECDsa _key;

    private CertificateAuthority(X509Certificate2 certificate, ECDsa key)
    {
        Certificate = certificate;
        _key = key;
        Fingerprint = Convert.ToHexStringLower(SHA256.HashData(certificate.RawData));
    }

    public X509Certificate2 Certificate { get; }

    /// <summary>SHA-256 of the CA certificate, lower-case hex.</summary>
    public string Fingerprint { get; }

    public byte[] FingerprintBytes => Convert.FromHexString(Fingerprint);

    public string CertificatePem => Certificate.ExportCertificatePem();

    /// <summary>Loads the CA from <paramref name="folder"/>, creating it on first start.</summary>
    public static CertificateAuthority LoadOrCreate(string folder, TimeProvider time)
    {
        Directory.CreateDirectory(folder);
        string certPath = Path.Combine(folder, "ca.pem");
        string keyPath = Path.Combine(folder, "ca.key");
        if (File.Exists(certPath) && File.Exists(keyPath))
        {
            try
            {
                var cert = X509Certificate2.CreateFromPem(File.ReadAllText(certPath));
                var key = ECDsa.Create();
                key.ImportFromPem(File.ReadAllText(keyPath));
                return new CertificateAuthority(cert, key);
            }
            catch (CryptographicException e)
            {
                throw new HavenException(ErrorCode.Corrupt, $"the server CA in {folder} cannot be read: {e.Message}", "restore ca.pem and ca.key from a backup of the data folder; a new CA would lock out every enrolled agent");
            }
        }

        var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN=Haven server CA {Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}", caKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        var now = time.GetUtcNow();
        var ca = request.CreateSelfSigned(now.AddMinutes(-5), now.AddYears(20));
        WriteSecret(keyPath, caKey.ExportPkcs8PrivateKeyPem());
        File.WriteAllText(certPath, ca.ExportCertificatePem());
        return new CertificateAuthority(X509Certificate2.CreateFromPem(ca.ExportCertificatePem()), caKey);
    }

    /// <summary>A TLS certificate for the server: localhost, the loopback addresses, the machine name and <paramref name="extraNames"/>.</summary>
    public X509Certificate2 IssueServerCertificate(IEnumerable<string> extraNames, TimeProvider time)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=Haven server", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("localhost");
        san.AddIpAddress(IPAddress.Loopback);
        san.AddIpAddress(IPAddress.IPv6Loopback);
        san.AddDnsName(Environment.MachineName);
        foreach (var name in extraNames.Distinct(StringComparer.OrdinalIgnoreCase))
        {
            if (IPAddress.TryParse(name, out var ip))
            {
                san.AddIpAddress(ip);
            }
            else if (name.Length > 0)
            {
                san.AddDnsName(name);
            }
        }

        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(ServerAuthOid)], false));
        var now = time.GetUtcNow();
        using var signed = request.Create(Certificate.SubjectName, X509SignatureGenerator.CreateForECDsa(_key), now.AddMinutes(-5), now.AddDays(397), RandomSerial());
        using var withKey = signed.CopyWithPrivateKey(key);
        // Through PKCS#12 so the key is usable by SslStream on every platform.
        return X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>
    /// Signs an agent's certificate request: subject CN = client id, O = tenant id, client authentication only. The
    /// request's own subject and extensions are ignored; only its public key is taken, after checking its signature.
    /// </summary>
    public X509Certificate2 IssueClientCertificate(string csrPem, string clientId, string tenantId, TimeProvider time)
    {
        CertificateRequest csr;
        try
        {
            csr = CertificateRequest.LoadSigningRequestPem(csrPem, HashAlgorithmName.SHA256, CertificateRequestLoadOptions.Default);
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            throw new HavenException(ErrorCode.Usage, $"the certificate request is not a valid PKCS#10 request: {e.Message}");
        }

        var request = new CertificateRequest(new X500DistinguishedName($"CN={clientId}, O={tenantId}"), csr.PublicKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(ClientAuthOid)], false));
        var now = time.GetUtcNow();
        var generator = X509SignatureGenerator.CreateForECDsa(_key);
        return request.Create(Certificate.SubjectName, generator, now.AddMinutes(-5), now + ClientLifetime, RandomSerial());
    }

    /// <summary>True when <paramref name="certificate"/> was signed by this CA, is within its validity and is for clients.</summary>
    public string? ValidateClient(X509Certificate2 certificate, TimeProvider time)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(Certificate);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.VerificationTime = time.GetUtcNow().UtcDateTime;
        chain.ChainPolicy.VerificationTimeIgnored = false;
        if (!chain.Build(certificate))
        {
            var status = chain.ChainStatus.Select(s => s.Status).ToList();
            return status.Contains(X509ChainStatusFlags.NotTimeValid) ? "certificate expired or not yet valid"
                : status.Contains(X509ChainStatusFlags.UntrustedRoot) || status.Contains(X509ChainStatusFlags.PartialChain) ? "certificate not issued by this server's CA"
                : "certificate rejected: " + string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()));
        }

        bool clientAuth = certificate.Extensions.OfType<X509EnhancedKeyUsageExtension>().Any(e => e.EnhancedKeyUsages.Cast<Oid>().Any(o => o.Value == ClientAuthOid));
        return clientAuth ? null : "certificate is not a client certificate";
    }

    private static byte[] RandomSerial()
    {
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F; // positive
        return serial;
    }

    internal static void WriteSecret(string path, string content)
    {
        using (var stream = new FileStream(path, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
        using (var writer = new StreamWriter(stream))
        {
            writer.Write(content);
        }

        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }

    public void Dispose()
    {
        _key.Dispose();
        Certificate.Dispose();
    }
}
